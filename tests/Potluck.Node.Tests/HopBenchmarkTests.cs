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
        // Short run: CI checks the method works; `potluck bench hop` runs the long one.
        var result = await HopBenchmark.RunAsync(new HopBenchmarkOptions { Width = 2048, Stages = 3, WarmupSteps = 50, Steps = 300 },
            new Progress<string>(output.WriteLine));
        output.WriteLine(result.ToString());
        Assert.True(result.SingleStageMedianMs > 0);
        Assert.True(result.ChainMedianMs > result.SingleStageMedianMs, "two more hops must cost something");
        Assert.True(result.SingleStageP99Ms >= result.SingleStageMedianMs);
        Assert.True(result.PerHopMedianMs < 5, $"per-hop median {result.PerHopMedianMs} ms is far off the 0.25 ms target");
    }
}
