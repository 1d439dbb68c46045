using Potluck.Inference;
using Potluck.Inference.Native;

namespace Potluck.Deploy.Tests;

/// <summary>POTLUCK_GGML_VARIANT (set in images and pods to force a CPU variant) names a folder: only the known names pass.</summary>
public sealed class GgmlVariantTests
{
    [Theory]
    [InlineData("avx512", "avx512")]
    [InlineData("avx2", "avx2")]
    [InlineData(" avx ", "avx")]
    [InlineData("NOAVX", "noavx")]
    public void A_known_variant_name_is_taken(string requested, string expected) =>
        Assert.Equal(expected, NativeRuntime.SelectVariant(requested));

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("  ")]
    public void Unset_detects_the_cpus_variant(string? requested) =>
        Assert.Contains(NativeRuntime.SelectVariant(requested), NativeRuntime.KnownVariants);

    [Theory]
    [InlineData("../../../../tmp/evil")]
    [InlineData("avx2/../../x")]
    [InlineData("/usr/lib")]
    [InlineData("avx2\0")]
    [InlineData("cuda")]
    [InlineData("avx2 avx")]
    public void Anything_else_is_refused_with_the_allowed_names(string requested)
    {
        var e = Assert.Throws<EngineException>(() => NativeRuntime.SelectVariant(requested));
        Assert.Contains("POTLUCK_GGML_VARIANT", e.Message);
        Assert.Contains("avx512, avx2, avx, noavx", e.Message);
    }
}
