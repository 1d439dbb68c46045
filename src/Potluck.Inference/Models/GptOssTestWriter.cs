namespace Potluck.Inference.Models;

/// <summary>
/// gpt-oss files as llama.cpp's "gpt-oss" loader (LLM_ARCH_OPENAI_MOE) reads them: every layer has Q/K/V/O
/// biases, per-head attention sinks, a post-attention norm before a biased router and biased experts; even
/// layers use the sliding window (attention.sliding_window, period 2), and RoPE is YaRN as the published
/// conversions write it (factor 32 over an original context of 4096).
/// </summary>
internal sealed class GptOssTestWriter : TestFamilyWriter
{
    /// <summary>rope.scaling.factor and rope.scaling.original_context_length of the published gpt-oss files.</summary>
    internal const float YarnFactor = 32f;
    internal const int YarnOriginalContext = 4096;

    public override string Architecture => "gpt-oss";

    /// <summary>Tiny: 64 wide, 4 heads of 16, 4 experts (2 used) of 64, window 8.</summary>
    public override TestModelSpec Example { get; } = new()
    {
        Architecture = "gpt-oss",
        ExpertCount = 4,
        ExpertUsedCount = 2,
        ExpertFeedForwardLength = 64,
        SlidingWindow = 8,
        RopeFreqBase = 150_000f,
    };

    public override void Validate(TestModelSpec spec)
    {
        if (spec.ExpertCount < 2) throw new ArgumentException("gpt-oss layers are mixtures of experts: ExpertCount must be at least 2");
        if (spec.TiedEmbeddings) throw new ArgumentException("llama.cpp's gpt-oss loader requires output.weight");
        if (spec.RopeFreqFactors) throw new ArgumentException("llama.cpp's gpt-oss loader rejects rope_freqs.weight");
        if (spec.SlidingWindowPattern is { } p && p < 1) throw new ArgumentException("SlidingWindowPattern must be positive");
    }

    public override void AddMetadata(GgufWriter writer, TestModelSpec spec)
    {
        const string a = "gpt-oss";
        writer.Add($"{a}.attention.key_length", (uint)spec.EffectiveHeadDim)
              .Add($"{a}.attention.value_length", (uint)spec.EffectiveHeadDim)
              .Add($"{a}.attention.sliding_window", (uint)(spec.SlidingWindow ?? 128))
              .Add($"{a}.expert_count", (uint)spec.ExpertCount)
              .Add($"{a}.expert_used_count", (uint)spec.ExpertUsedCount)
              .Add($"{a}.expert_feed_forward_length", (uint)ExpertWidth(spec))
              .Add($"{a}.rope.scaling.type", "yarn")
              .Add($"{a}.rope.scaling.factor", YarnFactor)
              .Add($"{a}.rope.scaling.original_context_length", (uint)YarnOriginalContext);
        // Published files carry no pattern key (llama.cpp defaults to period 2); write it only when asked.
        if (spec.SlidingWindowPattern is { } pattern) writer.Add($"{a}.attention.sliding_window_pattern", (uint)pattern);
    }

    public override void AddLayer(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random)
    {
        var headDim = spec.EffectiveHeadDim;
        long embd = spec.EmbeddingLength, ff = ExpertWidth(spec), experts = spec.ExpertCount;
        long qDim = (long)spec.HeadCount * headDim, kvDim = (long)spec.KvHeadCount * headDim;
        var p = $"blk.{layer}.";
        void Random(string name, long[] shape, float relative = 1f) => writer.AddTensor(p + name, shape, random.Uniform(p + name, relative));

        writer.AddTensor(p + "attn_norm.weight", [embd], TestTensors.Ones);
        Random("attn_q.weight", [embd, qDim]);
        Random("attn_q.bias", [qDim]);
        Random("attn_k.weight", [embd, kvDim]);
        Random("attn_k.bias", [kvDim]);
        Random("attn_v.weight", [embd, kvDim]);
        Random("attn_v.bias", [kvDim]);
        Random("attn_output.weight", [qDim, embd]);
        Random("attn_output.bias", [embd]);
        // Sinks are logits next to q·k/√d (order 1): scale them up so they visibly take attention mass.
        Random("attn_sinks.weight", [spec.HeadCount], 10f);
        writer.AddTensor(p + "post_attention_norm.weight", [embd], TestTensors.Ones);
        Random("ffn_gate_inp.weight", [embd, experts]);
        Random("ffn_gate_inp.bias", [experts], 5f);
        // Gate and up at 2.5× so a fair share of pre-activations pass swiglu_oai's ±7 clamp.
        Random("ffn_gate_exps.weight", [embd, ff, experts], 2.5f);
        Random("ffn_gate_exps.bias", [ff, experts]);
        Random("ffn_up_exps.weight", [embd, ff, experts], 2.5f);
        Random("ffn_up_exps.bias", [ff, experts]);
        Random("ffn_down_exps.weight", [ff, embd, experts], 0.5f);
        Random("ffn_down_exps.bias", [embd, experts]);
    }

    private static int ExpertWidth(TestModelSpec spec) => spec.ExpertFeedForwardLength ?? spec.FeedForwardLength;
}
