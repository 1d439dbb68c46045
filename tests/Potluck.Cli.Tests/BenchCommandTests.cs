using System.Text.Json;

namespace Potluck.Cli.Tests;

/// <summary>`potluck bench`: a short real hop measurement with its JSON report, and honesty about what is missing.</summary>
[ProcessTest]
public sealed class BenchCommandTests : IClassFixture<TempHome>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);
    private readonly TempHome _home;

    public BenchCommandTests(TempHome home) => _home = home;

    [Fact]
    public async Task HopBenchmarkPrintsATableAndWritesTheReport()
    {
        var report = _home.File("hop.json");
        var run = await PotluckProcess.RunAsync(_home.Path, Timeout,
            "bench", "hop", "--width", "256", "--steps", "40", "--warmup", "5", "--pairs", "2", "--rows", "1,64", "--report", report);
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains("per extra hop", run.Stdout);

        using var json = JsonDocument.Parse(await File.ReadAllTextAsync(report));
        var root = json.RootElement;
        Assert.Equal("hop", root.GetProperty("Benchmark").GetString());
        Assert.Equal(Environment.ProcessorCount, root.GetProperty("Machine").GetProperty("ProcessorCount").GetInt32());
        var results = root.GetProperty("Results");
        Assert.Equal(256, results.GetProperty("Width").GetInt32());
        Assert.Equal("F16", results.GetProperty("WireType").GetString());
        Assert.True(results.GetProperty("SingleStageMedianMs").GetDouble() > 0);
        Assert.True(results.GetProperty("ChainMedianMs").GetDouble() > 0);
        // TLS and plaintext, per row count: the TLS cost per hop is in the report.
        Assert.True(double.IsFinite(results.GetProperty("TlsCostPerHopMs").GetDouble()));
        Assert.Equal([1, 64], results.GetProperty("ByRows").EnumerateArray().Select(r => r.GetProperty("Rows").GetInt32()));
        Assert.Contains("TLS cost per hop at 1 row(s)", run.Stdout);
    }

    [Fact]
    public async Task PoolBenchmarkStartsALocalPoolMeasuresBothSidesAndStopsIt()
    {
        var report = _home.File("pool.json");
        var run = await PotluckProcess.RunAsync(_home.Path, Timeout,
            "bench", "pool", "--nodes", "2", "--runs", "1", "--prompt", "4", "--decode", "4", "--report", report);
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains("decode (tokens/s)", run.Stdout);

        using var json = JsonDocument.Parse(await File.ReadAllTextAsync(report));
        var results = json.RootElement.GetProperty("Results");
        var figures = results.GetProperty("Figures");
        Assert.True(figures.GetProperty("PoolDecodeTokensPerSecond").GetProperty("Median").GetDouble() > 0);
        Assert.True(figures.GetProperty("ReferenceDecodeTokensPerSecond").GetProperty("Median").GetDouble() > 0);
        Assert.True(results.GetProperty("DecodeRatio").GetDouble() > 0);
    }

    [Fact]
    public async Task LoadBenchmarkRunsConcurrentSessionsAgainstBatchedLlamaCpp()
    {
        var report = _home.File("load.json");
        var run = await PotluckProcess.RunAsync(_home.Path, Timeout,
            "bench", "load", "--nodes", "2", "--concurrency", "1,2", "--prompt", "16", "--tokens", "8", "--rounds", "1", "--report", report);
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains("2 session(s) at once", run.Stdout);
        Assert.Contains("TTFT p95 (ms)", run.Stdout);
        Assert.Contains("errors (sessions)", run.Stdout);

        using var json = JsonDocument.Parse(await File.ReadAllTextAsync(report));
        var root = json.RootElement;
        Assert.Equal("load", root.GetProperty("Benchmark").GetString());
        var levels = root.GetProperty("Results").GetProperty("Levels").EnumerateArray().ToArray();
        Assert.Equal([1, 2], levels.Select(l => l.GetProperty("Figures").GetProperty("Concurrency").GetInt32()));
        foreach (var level in levels)
        {
            var figures = level.GetProperty("Figures");
            Assert.Equal(0, figures.GetProperty("Errors").GetInt32());
            foreach (var side in new[] { "Potluck", "LlamaCpp" })
                foreach (var figure in new[] { "AggregateTokensPerSecond", "DecodeTokensPerSecond", "TtftP50Ms", "TtftP95Ms", "ItlP50Ms", "ItlP95Ms" })
                    Assert.True(figures.GetProperty(side).GetProperty(figure).GetProperty("Median").GetDouble() > 0, $"{side} {figure}");
            // Every session streamed all its tokens: 8 per session on both sides.
            var concurrency = figures.GetProperty("Concurrency").GetInt32();
            Assert.Equal(8 * concurrency, figures.GetProperty("Potluck").GetProperty("Rounds")[0].GetProperty("OutputTokens").GetInt32());
            Assert.Equal(8 * concurrency, figures.GetProperty("LlamaCpp").GetProperty("Rounds")[0].GetProperty("OutputTokens").GetInt32());
            Assert.True(level.GetProperty("AggregateRatio").GetDouble() > 0);
        }
    }

    [Fact]
    public async Task MeasuringARemotePoolNeedsItsModelFile()
    {
        var run = await PotluckProcess.RunAsync(_home.Path, Timeout, "bench", "pool", "--url", "http://127.0.0.1:9/");
        Assert.True(run.ExitCode == 2, run.ToString());
        TextAssert.OneLineError(run, "--url needs --model");
        var load = await PotluckProcess.RunAsync(_home.Path, Timeout, "bench", "load", "--url", "http://127.0.0.1:9/");
        Assert.True(load.ExitCode == 2, load.ToString());
        TextAssert.OneLineError(load, "--url needs --model");
    }
}
