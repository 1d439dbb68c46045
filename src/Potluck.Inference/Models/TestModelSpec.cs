using System.Text.Json;
using System.Security.Cryptography;
using System.Text;

namespace Potluck.Inference.Models;

/// <summary>
/// Hyperparameters of a deterministic random test model. Equal specs produce byte-identical files.
/// </summary>
/// <remarks>
/// K-quants (Q4_K, Q6_K...) use 256-wide blocks: llama.cpp quantizes a tensor whose rows (ne[0]) are not a
/// multiple of 256 with a fallback type instead (Q4_K→Q5_0, Q6_K→Q8_0). To test real K-quant weights, make
/// EmbeddingLength, FeedForwardLength and HeadCount×HeadDim multiples of 256. Q4_0/Q8_0 need multiples of 32.
/// </remarks>
public sealed record TestModelSpec
{
    /// <summary>Bumped whenever the generator's output for an unchanged spec changes, so caches never serve stale files.</summary>
    internal const int GeneratorVersion = 2;

    /// <summary>A family of <see cref="TestFamilyWriters"/>: "llama", "mistral", "qwen2", "qwen3", ...</summary>
    public string Architecture { get; init; } = "llama";
    public int EmbeddingLength { get; init; } = 64;
    public int LayerCount { get; init; } = 4;
    public int HeadCount { get; init; } = 4;
    public int KvHeadCount { get; init; } = 2;
    public int FeedForwardLength { get; init; } = 128;
    public int ContextLength { get; init; } = 512;
    public int Seed { get; init; } = 1;

    /// <summary>
    /// Vocabulary size; null: the minimal vocabulary (specials, bytes, ChatML markers). Larger ones add plain pieces,
    /// for benchmarks whose LM head should weigh what a real model's does (32k and more).
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    public int? VocabSize { get; init; }
    /// <summary>
    /// Standard deviation of the uniform random weights. At 0.1 every family decodes varied greedy text;
    /// at 0.02 greedy output collapses to one token (engine.md).
    /// </summary>
    public float WeightScale { get; init; } = 0.1f;
    /// <summary>Omit output.weight: the LM head reuses token_embd.weight.</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>Llama-3 style rope_freqs.weight [head_dim/2] (llama and mistral only).</summary>
    public bool RopeFreqFactors { get; init; }
    public float RopeFreqBase { get; init; } = 10000f;
    public float RmsNormEps { get; init; } = 1e-5f;
    /// <summary>Per-head dimension; null means EmbeddingLength / HeadCount. Qwen3 models often differ (e.g. 1024 wide, 16 heads of 128).</summary>
    public int? HeadDim { get; init; }
    /// <summary>Mistral sliding-window size written to the metadata; null means 4096 (Mistral 7B v0.1) for "mistral", none otherwise.</summary>
    public int? SlidingWindow { get; init; }

    /// <summary>Experts per mixture-of-experts layer; 0 writes dense feed-forward layers.</summary>
    public int ExpertCount { get; init; }
    /// <summary>Experts each token uses (expert_used_count).</summary>
    public int ExpertUsedCount { get; init; }
    /// <summary>Hidden width of one expert (expert_feed_forward_length); null means FeedForwardLength.</summary>
    public int? ExpertFeedForwardLength { get; init; }
    /// <summary>Hidden width of the shared expert(s) where the family has one; null writes none.</summary>
    public int? SharedExpertFeedForwardLength { get; init; }
    /// <summary>Dense layers before the expert layers (DeepSeek's leading_dense_block_count).</summary>
    public int LeadingDenseLayers { get; init; }
    /// <summary>Every how-many-th layer is global where the family interleaves sliding-window layers (Gemma 3: 6).</summary>
    public int? SlidingWindowPattern { get; init; }

    /// <summary>Linear RoPE scaling written as rope.scaling.type "linear" with this factor (gemma3: its global layers); null writes none.</summary>
    public float? RopeScalingFactor { get; init; }
    /// <summary>
    /// LongRoPE's original context (phi3): when set, the file carries rope.scaling.original_context_length, the
    /// attention factor the converter derives from ContextLength / this, and rope_factors_long/short tensors.
    /// </summary>
    public int? RopeOriginalContextLength { get; init; }

    /// <summary>final_logit_softcapping written to the metadata (gemma3); null writes none.</summary>
    public float? FinalLogitSoftcapping { get; init; }
    /// <summary>rope.freq_base_swa: the RoPE base of sliding-window layers (gemma3); null writes none (the loader's 10000).</summary>
    public float? RopeFreqBaseSwa { get; init; }
    /// <summary>DeepSeek2: rank of Q's low-rank path (attn_q_a → norm → attn_q_b); null writes a direct attn_q (V2-Lite).</summary>
    public int? QueryLoraRank { get; init; }
    /// <summary>DeepSeek2: width of the compressed KV latent (kv_lora_rank) that latent attention caches.</summary>
    public int KvLoraRank { get; init; }
    /// <summary>DeepSeek2: the rotated part of each Q/K head (qk_rope_head_dim, rope.dimension_count).</summary>
    public int RopeHeadDim { get; init; }
    /// <summary>DeepSeek2: the unrotated part of each Q/K head (qk_nope_head_dim).</summary>
    public int NopeHeadDim { get; init; }
    /// <summary>DeepSeek2: V's head size (v_head_dim).</summary>
    public int ValueHeadDim { get; init; }
    /// <summary>DeepSeek2: write the legacy unsplit attn_kv_b (head_count_kv = head_count) instead of attn_k_b/attn_v_b.</summary>
    public bool LegacyKvB { get; init; }
    /// <summary>expert_gating_func where the family writes it: 1 softmax, 2 sigmoid (DeepSeek V3); 0 writes none.</summary>
    public int ExpertGatingFunc { get; init; }
    /// <summary>expert_weights_norm: divide the chosen experts' weights by their sum.</summary>
    public bool ExpertWeightsNorm { get; init; }
    /// <summary>expert_weights_scale; 0 writes 1.</summary>
    public float ExpertWeightsScale { get; init; }
    /// <summary>Write exp_probs_b.bias (DeepSeek V3's selection-only bias) in expert layers.</summary>
    public bool ExpertSelectionBias { get; init; }
    /// <summary>expert_group_count / expert_group_used_count (group-limited routing); 0 writes none.</summary>
    public int ExpertGroupCount { get; init; }
    public int ExpertGroupUsedCount { get; init; }
    /// <summary>YaRN: rope.scaling.factor with rope.scaling.type yarn; 0 writes no scaling.</summary>
    public float RopeYarnFactor { get; init; }
    /// <summary>YaRN: rope.scaling.yarn_log_multiplier as converters write it (0.1 × mscale_all_dim).</summary>
    public float RopeYarnLogMultiplier { get; init; }
    /// <summary>YaRN: rope.scaling.original_context_length; null means ContextLength.</summary>
    public int? RopeYarnOriginalContext { get; init; }

    /// <summary>Jinja chat template stored as tokenizer.chat_template; null writes none. Default: ChatML.</summary>
    public string? ChatTemplate { get; init; } = TestModelGenerator.ChatMlTemplate;

    public int EffectiveHeadDim => HeadDim ?? EmbeddingLength / HeadCount;

    /// <summary>
    /// The embedded default model for `potluck serve` (use with <see cref="DemoWeightType"/>). 256 wide, 8 layers,
    /// 8 heads of 32 with 4 KV heads: about 6.4M parameters, so F32 generation plus Q8_0 quantization takes well under
    /// two seconds and decode on 2 cores costs a few ms per token per node, while 8 layers still split across several
    /// nodes. FeedForwardLength is 768 rather than the Llama ratio's 688 so that every row width is a multiple of 256
    /// and the same spec also yields genuine K-quant files.
    /// </summary>
    public static TestModelSpec Demo { get; } = new()
    {
        Architecture = "llama",
        EmbeddingLength = 256,
        LayerCount = 8,
        HeadCount = 8,
        KvHeadCount = 4,
        FeedForwardLength = 768,
        ContextLength = 2048,
        Seed = 1,
    };

    /// <summary>Q8_0: 4× smaller than F32 and matches llama.cpp's logits exactly (engine.md).</summary>
    public static Gguf.GgmlType DemoWeightType => Gguf.GgmlType.Q8_0;

    /// <summary>The architectures the generator writes.</summary>
    public static IReadOnlyList<string> Architectures => TestFamilyWriters.Architectures;

    /// <summary>A small spec with the traits that distinguish each family, for cross-architecture tests.</summary>
    public static TestModelSpec ForArchitecture(string architecture) => TestFamilyWriters.Get(architecture).Example;

    /// <summary>Throws ArgumentException when the hyperparameters cannot form a valid model.</summary>
    public void Validate()
    {
        var family = TestFamilyWriters.Get(Architecture);
        Positive(EmbeddingLength, nameof(EmbeddingLength));
        Positive(LayerCount, nameof(LayerCount));
        Positive(HeadCount, nameof(HeadCount));
        Positive(KvHeadCount, nameof(KvHeadCount));
        if (VocabSize is { } vocab && (vocab < TestModelGenerator.Vocab.Size || vocab > 1 << 20))
            throw new ArgumentException($"VocabSize must be between {TestModelGenerator.Vocab.Size} (the minimal vocabulary) and {1 << 20}, got {vocab}");
        Positive(FeedForwardLength, nameof(FeedForwardLength));
        Positive(ContextLength, nameof(ContextLength));
        if (HeadDim is null && EmbeddingLength % HeadCount != 0)
            throw new ArgumentException($"EmbeddingLength {EmbeddingLength} is not divisible by HeadCount {HeadCount}");
        if (EffectiveHeadDim <= 0 || EffectiveHeadDim % 2 != 0)
            throw new ArgumentException($"head dimension {EffectiveHeadDim} must be positive and even (RoPE rotates pairs)");
        if (HeadCount % KvHeadCount != 0)
            throw new ArgumentException($"HeadCount {HeadCount} is not a multiple of KvHeadCount {KvHeadCount}");
        if (ExpertCount < 0 || ExpertUsedCount < 0 || ExpertUsedCount > ExpertCount || (ExpertCount > 0 && ExpertUsedCount == 0))
            throw new ArgumentException($"ExpertUsedCount {ExpertUsedCount} must lie in [1, ExpertCount {ExpertCount}] for an expert model");
        if (LeadingDenseLayers < 0 || LeadingDenseLayers > LayerCount) throw new ArgumentException("LeadingDenseLayers must lie in [0, LayerCount]");
        if (!(WeightScale > 0) || !float.IsFinite(WeightScale)) throw new ArgumentException("WeightScale must be positive and finite");
        if (!(RmsNormEps > 0)) throw new ArgumentException("RmsNormEps must be positive");
        if (!(RopeFreqBase > 0)) throw new ArgumentException("RopeFreqBase must be positive");
        family.Validate(this);
    }

    /// <summary>A short stable hash of every field (the record as JSON, so a new field counts without edits here), the generator version and weight type.</summary>
    public string CacheKey(Gguf.GgmlType type)
    {
        var canonical = $"{GeneratorVersion}|{(int)type}|{JsonSerializer.Serialize(this)}";
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(canonical));
        return Convert.ToHexStringLower(hash.AsSpan(0, 8));
    }

    private static void Positive(int value, string name)
    {
        if (value <= 0) throw new ArgumentException($"{name} must be positive, got {value}");
    }
}
