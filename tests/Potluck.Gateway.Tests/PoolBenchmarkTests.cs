using Potluck.Gateway.Bench;
using Xunit.Abstractions;

namespace Potluck.Gateway.Tests;

/// <summary>The pool benchmark runs end to end on the 3-process pool and returns plausible figures.</summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class PoolBenchmarkTests(PoolFixture pool, ITestOutputHelper output)
{
    [Fact]
    public async Task BenchmarkMeasuresPoolAndLlamaCpp()
    {
        var result = await PoolBenchmark.RunAsync(new PoolBenchmarkOptions(pool.Gateway.BaseAddress, pool.ModelPath, PromptTokens: 32, DecodeTokens: 32, Runs: 3, ReferenceThreads: 1),
            null, CancellationToken.None);
        output.WriteLine(System.Text.Json.JsonSerializer.Serialize(result));
        Assert.Equal(pool.ModelName, result.Model);
        foreach (var figure in new[] { result.PoolTimeToFirstTokenMs, result.PoolDecodeTokensPerSecond, result.ReferenceTimeToFirstTokenMs, result.ReferenceDecodeTokensPerSecond })
        {
            Assert.True(figure.Min > 0 && double.IsFinite(figure.Max), $"implausible figure {figure}");
            Assert.True(figure.Min <= figure.Median && figure.Median <= figure.Max);
        }
        Assert.True(result.DecodeRatio > 0);
    }
}
