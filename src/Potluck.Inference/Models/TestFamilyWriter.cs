using Potluck.Inference.Gguf;

namespace Potluck.Inference.Models;

/// <summary>
/// How the generator writes one family's GGUF: the keys and tensors llama.cpp's loader (b10221) expects for the
/// architecture, beyond the common header, embeddings and head that <see cref="TestModelGenerator"/> writes.
/// Adding a family is one writer registered in <see cref="TestFamilyWriters"/>.
/// </summary>
public abstract class TestFamilyWriter
{
    /// <summary>The spec's <see cref="TestModelSpec.Architecture"/> name.</summary>
    public abstract string Architecture { get; }

    /// <summary>general.architecture of the file (usually the same).</summary>
    public virtual string GgufArchitecture => Architecture;

    /// <summary>The family's part of general.name (potluck-test-{this}-...).</summary>
    public virtual string NameTag => Architecture;

    /// <summary>A small spec with the traits that distinguish the family, for cross-architecture tests.</summary>
    public abstract TestModelSpec Example { get; }

    /// <summary>rope.dimension_count.</summary>
    public virtual int RopeDimensions(TestModelSpec spec) => spec.EffectiveHeadDim;

    /// <summary>Throws ArgumentException for a spec the family cannot form.</summary>
    public virtual void Validate(TestModelSpec spec) { }

    /// <summary>Family-specific metadata keys.</summary>
    public virtual void AddMetadata(GgufWriter writer, TestModelSpec spec) { }

    /// <summary>Tensors outside the layers beyond embeddings, output norm, output and rope_freqs.</summary>
    public virtual void AddGlobalTensors(GgufWriter writer, TestModelSpec spec, TestTensors random) { }

    /// <summary>Every tensor of layer <paramref name="layer"/>.</summary>
    public abstract void AddLayer(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random);
}

/// <summary>Deterministic tensor contents: uniform values seeded by (seed, tensor name), and constants.</summary>
public sealed class TestTensors(int seed, float scale)
{
    public float Scale => scale;

    /// <summary>Uniform values with standard deviation Scale × <paramref name="relative"/> (bound √3 of that).</summary>
    public GgufWriter.TensorFiller Uniform(string name, float relative = 1f) => data =>
    {
        var rng = new SplitMix64(SplitMix64.Derive(seed, name));
        var bound = scale * relative * MathF.Sqrt(3f);
        for (var i = 0; i < data.Length; i++) data[i] = rng.NextSymmetric(bound);
    };

    /// <summary>Norm weights: exactly 1 (engine.md: random norms make greedy text degenerate).</summary>
    public static void Ones(Span<float> data) => data.Fill(1f);

    public static GgufWriter.TensorFiller Constant(float value) => data => data.Fill(value);
}

/// <summary>The generator's families, keyed by spec architecture name.</summary>
public static class TestFamilyWriters
{
    private static readonly TestFamilyWriter[] All =
    [
        new LlamaTestWriter("llama"),
        new LlamaTestWriter("mistral"),
        new LlamaTestWriter("qwen2"),
        new LlamaTestWriter("qwen3"),
        new GptOssTestWriter(),
        new QwenMoeTestWriter("qwen3moe"),
        new QwenMoeTestWriter("qwen2moe"),
        new Gemma3TestWriter(),
        new Phi3TestWriter(),
        new DeepSeek2TestWriter(),
    ];

    private static readonly Dictionary<string, TestFamilyWriter> ByName = All.ToDictionary(w => w.Architecture, StringComparer.Ordinal);

    public static IReadOnlyList<string> Architectures { get; } = All.Select(w => w.Architecture).ToArray();

    public static TestFamilyWriter Get(string architecture) =>
        ByName.TryGetValue(architecture, out var w)
            ? w
            : throw new ArgumentException($"no test model family '{architecture}'; known: {string.Join(", ", Architectures)}", nameof(architecture));
}
