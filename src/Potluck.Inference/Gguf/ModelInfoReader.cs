using Potluck.Inference.Families;

namespace Potluck.Inference.Gguf;

/// <summary>Derives <see cref="ModelInfo"/> from a GGUF header the way llama.cpp's loader reads the same keys.</summary>
internal static class ModelInfoReader
{
    public static ModelInfo Read(GgufFile file)
    {
        var arch = file.Get<string>("general.architecture")
                   ?? throw new GgufFormatException(file.Path, "metadata has no general.architecture");
        // Hyper-parameters are ints to the engine; a value outside int range is refused, never truncated.
        long Int(string key, long fallback = 0)
        {
            var value = file.GetInteger($"{arch}.{key}") ?? fallback;
            return value is >= int.MinValue and <= int.MaxValue
                ? value
                : throw new GgufFormatException(file.Path, $"metadata '{arch}.{key}' = {value} is out of range");
        }
        float Float(string key, float fallback) => (float)(file.GetFloat($"{arch}.{key}") ?? fallback);

        var embd = (int)Int("embedding_length");
        var heads = (int)Int("attention.head_count");
        var headDim = (int)Int("attention.key_length", heads > 0 ? embd / heads : 0);
        var tensorsByName = file.Tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        var vocab = file.Get<string[]>("tokenizer.ggml.tokens")?.Length
                    ?? (tensorsByName.TryGetValue("token_embd.weight", out var te) && te.Shape.Length > 1 ? (int)te.Shape[1] : 0);

        var scaleFactor = Float("rope.scaling.factor", 0f);
        if (scaleFactor == 0f) scaleFactor = Float("rope.scale_linear", 0f);

        var family = ModelFamilies.Find(arch);
        var scalingType = file.Get<string>($"{arch}.rope.scaling.type");
        var common = new ModelInfo
        {
            Path = file.Path,
            Architecture = arch,
            Name = file.Get<string>("general.name"),
            LayerCount = (int)Int("block_count"),
            EmbeddingLength = embd,
            FeedForwardLength = (int)Int("feed_forward_length"),
            HeadCount = heads,
            KvHeadCount = (int)Int("attention.head_count_kv", heads),
            HeadDim = headDim,
            ContextLength = (int)Int("context_length"),
            RmsNormEps = Float("attention.layer_norm_rms_epsilon", 1e-5f),
            RopeFreqBase = Float("rope.freq_base", 10000f),
            RopeFreqScale = scaleFactor > 0f ? 1f / scaleFactor : 1f,
            RopeScalingType = scalingType,
            RopeScaling = scalingType switch
            {
                "linear" => RopeScaling.Linear,
                "yarn" => RopeScaling.Yarn,
                "longrope" => RopeScaling.LongRope,
                _ => RopeScaling.None,
            },
            Rope = family?.Rope ?? RopeKind.Normal,
            SlidingWindow = file.GetInteger($"{arch}.attention.sliding_window") is { } ? (int)Int("attention.sliding_window") : null,
            VocabSize = vocab,
            ChatTemplate = file.Get<string>("tokenizer.chat_template"),
            TiedEmbeddings = !tensorsByName.ContainsKey("output.weight"),
            HasRopeFreqFactors = tensorsByName.ContainsKey("rope_freqs.weight"),
            WeightType = DominantWeightType(file.Tensors),
            FileBytes = file.FileLength,
            ModelId = file.HeaderHash,
            Tensors = file.Tensors,
        };
        if (family is null || common.LayerCount <= 0)
            return common with { KvLayers = Enumerable.Repeat(new LayerKv(headDim * common.KvHeadCount, headDim * common.KvHeadCount, null), Math.Max(0, common.LayerCount)).ToArray() };
        var withParameters = common with { Parameters = family.ReadParameters(new GgufMetadata(file, arch), common) };
        var kv = new LayerKv[withParameters.LayerCount];
        for (var l = 0; l < kv.Length; l++) kv[l] = family.DescribeKv(withParameters, l);
        return withParameters with { KvLayers = kv };
    }

    /// <summary>Checks that every hyperparameter the span engine divides or indexes by is sane.</summary>
    public static void ValidateForEngine(ModelInfo info)
    {
        var family = ModelFamilies.Find(info.Architecture)
                     ?? throw new UnsupportedArchitectureException(info.Architecture, ModelFamilies.Supported);
        void Require(bool ok, string what)
        {
            if (!ok) throw new GgufFormatException(info.Path, what);
        }
        Require(info.LayerCount > 0, $"{info.Architecture}.block_count must be positive");
        Require(info.EmbeddingLength > 0, $"{info.Architecture}.embedding_length must be positive");
        Require(info.HeadCount > 0 && info.KvHeadCount > 0, "attention head counts must be positive");
        Require(info.HeadCount % info.KvHeadCount == 0, $"head_count {info.HeadCount} is not a multiple of head_count_kv {info.KvHeadCount}");
        Require(info.HeadDim > 0 && info.HeadDim % 2 == 0, $"head dimension {info.HeadDim} must be positive and even");
        Require(info.ContextLength > 0, $"{info.Architecture}.context_length must be positive");
        Require(info.FeedForwardLength > 0, $"{info.Architecture}.feed_forward_length must be positive");
        Require(info.VocabSize > 0, "vocabulary is empty");
        Require(float.IsFinite(info.RmsNormEps) && info.RmsNormEps > 0, "layer_norm_rms_epsilon must be positive");
        Require(float.IsFinite(info.RopeFreqBase) && info.RopeFreqBase > 0, "rope.freq_base must be positive");
        family.Validate(info);
    }

    private static GgmlType DominantWeightType(IReadOnlyList<TensorInfo> tensors)
    {
        var counts = new Dictionary<GgmlType, long>();
        foreach (var t in tensors)
        {
            if (t.Shape.Length < 2 || !t.Name.StartsWith("blk.", StringComparison.Ordinal)) continue;
            counts[t.Type] = counts.GetValueOrDefault(t.Type) + t.Bytes;
        }
        return counts.Count == 0 ? GgmlType.F32 : counts.MaxBy(kv => kv.Value).Key;
    }
}
