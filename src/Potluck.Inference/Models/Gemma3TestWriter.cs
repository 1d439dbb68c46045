namespace Potluck.Inference.Models;

/// <summary>
/// gemma3 files as llama.cpp's converter writes them: per-head Q/K norms, post-attention and post-FFN norms,
/// attention.sliding_window (and attention.sliding_window_pattern only when the spec sets one: converted Gemma 3
/// files carry none and the loader's period is 6) and an explicit key_length. Norm weights are written as the
/// converter stores them, Gemma's +1 already folded in.
/// </summary>
internal sealed class Gemma3TestWriter : TestFamilyWriter
{
    public override string Architecture => "gemma3";

    // Six layers so one is global; a head size other than width / heads, as every Gemma 3 size has.
    public override TestModelSpec Example => new()
    {
        Architecture = "gemma3",
        LayerCount = 6,
        HeadDim = 32,
        SlidingWindow = 8,
        TiedEmbeddings = true,
        RopeFreqBase = 1_000_000f,
        RmsNormEps = 1e-6f,
    };

    public override void Validate(TestModelSpec spec)
    {
        if (spec.SlidingWindowPattern is <= 0) throw new ArgumentException("gemma3 SlidingWindowPattern must be positive");
        if (spec.SlidingWindow is <= 0) throw new ArgumentException("gemma3 SlidingWindow must be positive (null writes an all-global model)");
        if (spec.RopeFreqFactors) throw new ArgumentException("gemma3 has no rope_freqs.weight");
        if (spec.FinalLogitSoftcapping is { } cap && !(cap > 0f)) throw new ArgumentException("FinalLogitSoftcapping must be positive");
        if (spec.RopeFreqBaseSwa is { } b && !(b > 0f)) throw new ArgumentException("RopeFreqBaseSwa must be positive");
        if (spec.RopeScalingFactor is { } f && !(f >= 1f)) throw new ArgumentException("RopeScalingFactor must be at least 1");
    }

    public override void AddMetadata(GgufWriter writer, TestModelSpec spec)
    {
        writer.Add("gemma3.attention.key_length", (uint)spec.EffectiveHeadDim)
              .Add("gemma3.attention.value_length", (uint)spec.EffectiveHeadDim);
        if (spec.SlidingWindow is { } w) writer.Add("gemma3.attention.sliding_window", (uint)w);
        if (spec.SlidingWindowPattern is { } pat) writer.Add("gemma3.attention.sliding_window_pattern", (uint)pat);
        if (spec.RopeFreqBaseSwa is { } swaBase) writer.Add("gemma3.rope.freq_base_swa", swaBase);
        if (spec.FinalLogitSoftcapping is { } cap) writer.Add("gemma3.final_logit_softcapping", cap);
        if (spec.RopeScalingFactor is { } f)
            writer.Add("gemma3.rope.scaling.type", "linear").Add("gemma3.rope.scaling.factor", f);
    }

    public override void AddLayer(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random)
    {
        var headDim = spec.EffectiveHeadDim;
        long embd = spec.EmbeddingLength, ff = spec.FeedForwardLength;
        long qDim = (long)spec.HeadCount * headDim, kvDim = (long)spec.KvHeadCount * headDim;
        var p = $"blk.{layer}.";
        writer.AddTensor(p + "attn_norm.weight", [embd], NearOne(random, p + "attn_norm.weight"));
        writer.AddTensor(p + "attn_q.weight", [embd, qDim], random.Uniform(p + "attn_q.weight"));
        writer.AddTensor(p + "attn_k.weight", [embd, kvDim], random.Uniform(p + "attn_k.weight"));
        writer.AddTensor(p + "attn_v.weight", [embd, kvDim], random.Uniform(p + "attn_v.weight"));
        writer.AddTensor(p + "attn_q_norm.weight", [headDim], NearOne(random, p + "attn_q_norm.weight"));
        writer.AddTensor(p + "attn_k_norm.weight", [headDim], NearOne(random, p + "attn_k_norm.weight"));
        writer.AddTensor(p + "attn_output.weight", [qDim, embd], random.Uniform(p + "attn_output.weight"));
        writer.AddTensor(p + "post_attention_norm.weight", [embd], NearOne(random, p + "post_attention_norm.weight"));
        writer.AddTensor(p + "ffn_norm.weight", [embd], NearOne(random, p + "ffn_norm.weight"));
        writer.AddTensor(p + "ffn_gate.weight", [embd, ff], random.Uniform(p + "ffn_gate.weight"));
        writer.AddTensor(p + "ffn_up.weight", [embd, ff], random.Uniform(p + "ffn_up.weight"));
        writer.AddTensor(p + "ffn_down.weight", [ff, embd], random.Uniform(p + "ffn_down.weight"));
        writer.AddTensor(p + "post_ffw_norm.weight", [embd], NearOne(random, p + "post_ffw_norm.weight"));
    }

    /// <summary>
    /// Norm weights 1 ± 0.35 (std 0.2): distinct per tensor, so a swapped or re-offset (+1) norm shows, yet near
    /// enough to 1 that greedy text stays varied.
    /// </summary>
    internal static GgufWriter.TensorFiller NearOne(TestTensors random, string name) => data =>
    {
        random.Uniform(name, 0.2f / random.Scale)(data);
        for (var i = 0; i < data.Length; i++) data[i] += 1f;
    };
}
