using Potluck.Node.Bench;
using Xunit.Abstractions;

namespace Potluck.Node.Tests;

/// <summary>Timings run alone: on 2 cores a parallel test class would dominate the figures.</summary>
[CollectionDefinition("timing", DisableParallelization = true)]
public sealed class TimingCollection;

[Collection("timing")]
[ProcessTest]
public sealed class HopBenchmarkTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Hop_benchmark_measures_real_streams_and_reports_consistent_figures()
    {
        // Short run: CI checks the method works; `potluck bench hop` runs the long one (5 pairs at 1 and 512 rows).
        var result = await HopBenchmark.RunAsync(new HopBenchmarkOptions { Width = 2048, Stages = 3, WarmupSteps = 30, Steps = 200, Pairs = 2, RowCounts = [1, 64] },
            new Progress<string>(output.WriteLine));
        foreach (var rows in result.ByRows) output.WriteLine(rows.ToString());
        Assert.Equal([1, 64], result.ByRows.Select(r => r.Rows));
        Assert.All(result.ByRows, r => Assert.Equal(2, r.PairResults.Count));
        Assert.True(result.SingleStageMedianMs > 0);
        Assert.True(result.ChainMedianMs > result.SingleStageMedianMs, "two more hops must cost something");
        Assert.True(result.ByRows[0].PlainChainMedianMs > result.ByRows[0].PlainSingleMedianMs, "two more plaintext hops must cost something");
        Assert.True(result.ByRows[1].TlsChainMedianMs > result.ByRows[0].TlsChainMedianMs, "64 rows must cost more than 1");
        Assert.True(result.PerHopMedianMs < 5, $"per-hop median {result.PerHopMedianMs} ms is far off the 0.25 ms target");
        Assert.True(double.IsFinite(result.TlsCostPerHopMs) && result.TlsCostPerHopMinMs <= result.TlsCostPerHopMs);
    }
}
