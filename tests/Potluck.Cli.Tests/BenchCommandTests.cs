using System.Text.Json;

namespace Potluck.Cli.Tests;

/// <summary>`potluck bench`: a short real hop measurement with its JSON report, and honesty about what is missing.</summary>
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
            "bench", "hop", "--width", "256", "--steps", "40", "--warmup", "5", "--report", report);
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
    }

    [Fact]
    public async Task APoolBenchmarkThatDoesNotExistSaysSo()
    {
        var run = await PotluckProcess.RunAsync(_home.Path, Timeout, "bench", "pool");
        Assert.True(run.ExitCode == 1, run.ToString());
        TextAssert.OneLineError(run, "not part of this build yet");
    }
}
