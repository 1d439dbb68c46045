using Potluck.Inference.Gguf;
using Potluck.Inference.Models;

namespace Potluck.Benchmarks;

/// <summary>
/// The generated test models, from the same per-user cache the tests use (POTLUCK_TEST_MODELS overrides it), so a
/// benchmark run after the tests generates nothing.
/// </summary>
internal static class BenchmarkModels
{
    private static string CacheDirectory =>
        Environment.GetEnvironmentVariable("POTLUCK_TEST_MODELS") is { Length: > 0 } dir
            ? dir
            : Path.Combine(Path.GetTempPath(), $"potluck-test-models-{Environment.UserName}");

    /// <summary>The default small llama model (64 wide, 4 layers, 512 context) at Q8_0.</summary>
    public static string Small() => TestModelGenerator.GetOrCreate(new TestModelSpec(), GgmlType.Q8_0, CacheDirectory);
}
