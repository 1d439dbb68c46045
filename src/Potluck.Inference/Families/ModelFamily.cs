using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;

namespace Potluck.Inference.Families;

/// <summary>
/// One architecture (<c>general.architecture</c>) as the engine runs it: how its typed hyper-parameters are
/// read, what each layer caches, how a layer's graph is built, and what the gateway's head does. Families are
/// registered in <see cref="ModelFamilies"/>; adding one is one subclass there plus a generator entry.
/// </summary>
public abstract class ModelFamily
{
    /// <summary>The GGUF architecture string this family runs.</summary>
    public abstract string Architecture { get; }

    /// <summary>RoPE pairing llama.cpp uses for the architecture (llama_model_rope_type).</summary>
    public virtual RopeKind Rope => RopeKind.Normal;

    /// <summary>
    /// Reads the family's own hyper-parameters from the metadata, after the common ones in <paramref name="common"/>.
    /// Must not throw for a missing optional key: `potluck model inspect` reads every supported file through this.
    /// </summary>
    internal virtual FamilyParameters ReadParameters(GgufMetadata metadata, ModelInfo common) => FamilyParameters.None;

    /// <summary>Refuses hyper-parameters the family's graph cannot run (beyond the common checks).</summary>
    internal virtual void Validate(ModelInfo info) { }

    /// <summary>What layer <paramref name="layer"/> caches per position (called before any tensor is bound).</summary>
    public virtual LayerKv DescribeKv(ModelInfo info, int layer) =>
        new(info.HeadDim * info.KvHeadCount, info.HeadDim * info.KvHeadCount, Window: null);

    /// <summary>Binds layer <paramref name="layer"/>'s tensors (shape-checked) and returns its graph builder.</summary>
    internal abstract ILayerBlock BindLayer(GgufModel model, int layer);

    /// <summary>What the gateway's head does around the transformer (embedding scale, final softcap).</summary>
    public virtual HeadTraits Head(ModelInfo info) => HeadTraits.Plain;
}

/// <summary>
/// Family-specific hyper-parameters, typed per family (experts, sliding-window pattern, latent attention...).
/// The common ones (width, heads, RoPE) stay on <see cref="ModelInfo"/>.
/// </summary>
public record FamilyParameters
{
    public static FamilyParameters None { get; } = new();
}

/// <summary>
/// What one layer caches per position: K and V row widths (heads × head size) and the sliding window its
/// attention uses. Latent attention caches one compressed row as K and reads V as its first
/// <see cref="ValueWidth"/> columns (<see cref="ValueSharesKey"/>), as llama.cpp's MLA cache does.
/// </summary>
public readonly record struct LayerKv(int KeyWidth, int ValueWidth, int? Window, bool ValueSharesKey = false)
{
    /// <summary>F16 bytes one position costs in this layer.</summary>
    public long BytesPerToken => 2L * (KeyWidth + (ValueSharesKey ? 0 : ValueWidth));
}

/// <summary>The head's part of a family: a scale on looked-up embeddings and an optional final logit softcap.</summary>
public sealed record HeadTraits(float EmbeddingScale = 1f, float FinalLogitSoftcap = 0f)
{
    public static HeadTraits Plain { get; } = new();
}

/// <summary>Typed reads of <c>{arch}.*</c> metadata keys, refusing values outside int range.</summary>
public sealed class GgufMetadata
{
    private readonly GgufFile _file;
    private readonly HashSet<string> _tensors;

    internal GgufMetadata(GgufFile file, string architecture)
    {
        _file = file;
        _tensors = file.Tensors.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
        Architecture = architecture;
    }

    public string Architecture { get; }
    public string Path => _file.Path;

    /// <summary>True when the file has the tensor (families detect optional parts by tensor presence, like llama.cpp).</summary>
    public bool HasTensor(string name) => _tensors.Contains(name);

    public int? Int(string key)
    {
        var value = _file.GetInteger($"{Architecture}.{key}");
        if (value is null) return null;
        return value is >= int.MinValue and <= int.MaxValue
            ? (int)value
            : throw new GgufFormatException(_file.Path, $"metadata '{Architecture}.{key}' = {value} is out of range");
    }

    public int Int(string key, int fallback) => Int(key) ?? fallback;

    public float? Float(string key) => _file.GetFloat($"{Architecture}.{key}") is { } v ? (float)v : null;

    public float Float(string key, float fallback) => Float(key) ?? fallback;

    public bool Bool(string key, bool fallback) =>
        _file.Metadata.TryGetValue($"{Architecture}.{key}", out var v) && v is bool b ? b : fallback;

    public string? String(string key) => _file.Get<string>($"{Architecture}.{key}");

    /// <summary>An int or an int array key (llama.cpp accepts both for per-layer values such as head counts).</summary>
    public int[]? IntArray(string key) => _file.Metadata.TryGetValue($"{Architecture}.{key}", out var v) ? v switch
    {
        int[] ints => ints,
        uint[] uints => uints.Select(u => checked((int)u)).ToArray(),
        bool[] bools => bools.Select(b => b ? 1 : 0).ToArray(),
        _ => null,
    } : null;
}
