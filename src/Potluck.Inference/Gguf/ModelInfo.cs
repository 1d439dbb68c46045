namespace Potluck.Inference.Gguf;

/// <summary>How RoPE pairs dimensions: llama/mistral rotate adjacent pairs, qwen2/qwen3 use NeoX halves.</summary>
public enum RopeKind
{
    Normal = 0,
    NeoX = 2,
}

/// <summary>rope.scaling.type as llama.cpp parses it (llama_rope_scaling_type_from_string).</summary>
public enum RopeScaling
{
    None,
    Linear,
    Yarn,
    LongRope,
}

/// <summary>One entry of the GGUF tensor index.</summary>
public sealed record TensorInfo(string Name, GgmlType Type, long[] Shape, long FileOffset, long Bytes);

/// <summary>Everything `potluck model inspect` shows, read from the GGUF header and tensor index only.</summary>
public sealed record ModelInfo
{
    public required string Path { get; init; }
    public required string Architecture { get; init; }
    public string? Name { get; init; }
    public required int LayerCount { get; init; }
    public required int EmbeddingLength { get; init; }
    public required int FeedForwardLength { get; init; }
    public required int HeadCount { get; init; }
    public required int KvHeadCount { get; init; }
    public required int HeadDim { get; init; }
    public required int ContextLength { get; init; }
    public required float RmsNormEps { get; init; }
    public required float RopeFreqBase { get; init; }
    public required float RopeFreqScale { get; init; }
    public required RopeKind Rope { get; init; }
    /// <summary>rope.scaling.type when the file sets one (linear, yarn, ...).</summary>
    public string? RopeScalingType { get; init; }
    public RopeScaling RopeScaling { get; init; }
    public int? SlidingWindow { get; init; }
    public required int VocabSize { get; init; }
    public string? ChatTemplate { get; init; }
    /// <summary>True when output.weight is absent and the LM head reuses token_embd.</summary>
    public required bool TiedEmbeddings { get; init; }
    /// <summary>True when rope_freqs.weight (Llama 3 frequency factors) is present.</summary>
    public required bool HasRopeFreqFactors { get; init; }
    /// <summary>The most common weight type among 2-D layer tensors (what a user calls the file's quant).</summary>
    public required GgmlType WeightType { get; init; }
    public required long FileBytes { get; init; }
    /// <summary>SHA-256 over the GGUF metadata and tensor index: files with other weights layout never mix.</summary>
    public required string ModelId { get; init; }
    public required IReadOnlyList<TensorInfo> Tensors { get; init; }
    /// <summary>The family's typed hyper-parameters; <see cref="Families.FamilyParameters.None"/> for unsupported architectures.</summary>
    public Families.FamilyParameters Parameters { get; init; } = Families.FamilyParameters.None;
    /// <summary>What each layer caches per position, index = layer (what span choice and KV budgets count).</summary>
    public IReadOnlyList<Families.LayerKv> KvLayers { get; init; } = [];
    /// <summary>True when the engine has a family for <see cref="Architecture"/>.</summary>
    public bool IsSupported => Families.ModelFamilies.Find(Architecture) is not null;
}
