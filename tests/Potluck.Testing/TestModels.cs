using Potluck.Inference.Gguf;
using Potluck.Inference.Models;

namespace Potluck.Testing;

/// <summary>
/// Generated test models shared by every test class and across runs: files live in a per-user cache directory
/// (POTLUCK_TEST_MODELS overrides it) and are named by a hash of spec and type, so each is generated once.
/// </summary>
public static class TestModels
{
    public static string CacheDirectory { get; } =
        Environment.GetEnvironmentVariable("POTLUCK_TEST_MODELS") is { Length: > 0 } dir
            ? dir
            : Path.Combine(Path.GetTempPath(), $"potluck-test-models-{Environment.UserName}");

    /// <summary>The path of the model for (spec, type), generated and quantized on first use.</summary>
    public static string Get(TestModelSpec spec, GgmlType type) =>
        TestModelGenerator.GetOrCreate(spec, type, CacheDirectory);

    /// <summary>The default small llama model (64 wide, 4 layers) at <paramref name="type"/>.</summary>
    public static string Small(GgmlType type = GgmlType.Q8_0) => Get(new TestModelSpec(), type);
}
