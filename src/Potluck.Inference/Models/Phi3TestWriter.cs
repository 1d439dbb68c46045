namespace Potluck.Inference.Models;

/// <summary>
/// phi3 files as llama.cpp's converter (Phi3MiniModel) writes them: fused attn_qkv and gate-up ffn_up, the
/// sliding_window key (0 when none; llama.cpp ignores it), and for LongRoPE the original context, the attention
/// factor the converter derives and the global rope_factors_long/short tensors.
/// </summary>
internal sealed class Phi3TestWriter : TestFamilyWriter
{
    public override string Architecture => "phi3";

    // llama.cpp's vocabulary loader patches token attributes of models whose general.name contains "phi3" or
    // "phi-3", looking up <|endoftext|>, which the test vocabulary lacks (load fails with _Map_base::at).
    public override string NameTag => "phi-iii";

    // LongRoPE over a 512-position model trained at 128: llama.cpp's 64-position context keeps the short factors.
    public override TestModelSpec Example => new()
    {
        Architecture = "phi3",
        ContextLength = 512,
        RopeOriginalContextLength = 128,
        SlidingWindow = 2047,
        RopeFreqBase = 10000f,
    };

    public override void Validate(TestModelSpec spec)
    {
        if (spec.HeadDim is { } d && d * spec.HeadCount != spec.EmbeddingLength)
            throw new ArgumentException("phi3 needs HeadCount × HeadDim = EmbeddingLength (its attn_output is n_embd × n_embd)");
        if (spec.RopeFreqFactors) throw new ArgumentException("phi3 carries rope_factors_long/short, not rope_freqs.weight");
        if (spec.RopeOriginalContextLength is { } o && (o <= 1 || o > spec.ContextLength))
            throw new ArgumentException("RopeOriginalContextLength must lie in (1, ContextLength]");
    }

    public override void AddMetadata(GgufWriter writer, TestModelSpec spec)
    {
        writer.Add("phi3.attention.sliding_window", (uint)(spec.SlidingWindow ?? 0));
        if (spec.RopeOriginalContextLength is { } original)
        {
            // convert_hf_to_gguf: scale = max / original; attn_factor = √(1 + ln scale / ln original) when scale > 1.
            var scale = (double)spec.ContextLength / original;
            var factor = scale > 1 ? Math.Sqrt(1 + Math.Log(scale) / Math.Log(original)) : 1.0;
            writer.Add("phi3.rope.scaling.original_context_length", (uint)original)
                  .Add("phi3.rope.scaling.attn_factor", (float)factor);
        }
    }

    public override void AddGlobalTensors(GgufWriter writer, TestModelSpec spec, TestTensors random)
    {
        if (spec.RopeOriginalContextLength is null) return;
        long half = spec.EffectiveHeadDim / 2;
        // Shaped like Phi-3.5's: short factors near 1, long factors rising to several times that.
        writer.AddTensor("rope_factors_long.weight", [half], Ramp(1f, 6f));
        writer.AddTensor("rope_factors_short.weight", [half], Ramp(1f, 1.5f));
    }

    public override void AddLayer(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random)
    {
        long embd = spec.EmbeddingLength, ff = spec.FeedForwardLength;
        long kvDim = (long)spec.KvHeadCount * spec.EffectiveHeadDim;
        var p = $"blk.{layer}.";
        writer.AddTensor(p + "attn_norm.weight", [embd], TestTensors.Ones);
        writer.AddTensor(p + "attn_qkv.weight", [embd, embd + 2 * kvDim], random.Uniform(p + "attn_qkv.weight"));
        writer.AddTensor(p + "attn_output.weight", [embd, embd], random.Uniform(p + "attn_output.weight"));
        writer.AddTensor(p + "ffn_norm.weight", [embd], TestTensors.Ones);
        writer.AddTensor(p + "ffn_up.weight", [embd, 2 * ff], random.Uniform(p + "ffn_up.weight"));
        writer.AddTensor(p + "ffn_down.weight", [ff, embd], random.Uniform(p + "ffn_down.weight"));
    }

    private static GgufWriter.TensorFiller Ramp(float from, float to) => data =>
    {
        for (var i = 0; i < data.Length; i++) data[i] = data.Length == 1 ? from : from + (to - from) * i / (data.Length - 1);
    };
}
