using Potluck.Inference.Gguf;

namespace Potluck.Inference.Models;

/// <summary>
/// qwen3moe and qwen2moe files as llama.cpp's loaders (b10221) expect them: every layer an expert layer;
/// qwen3moe with Qwen3's per-head Q/K norms and head size keys, qwen2moe with Q/K/V biases, a required
/// output.weight and a shared expert gated by ffn_gate_inp_shexp.
/// </summary>
internal sealed class QwenMoeTestWriter(string architecture) : TestFamilyWriter
{
    private bool IsQwen3 => architecture == "qwen3moe";

    public override string Architecture => architecture;

    /// <summary>Tiny (64 wide, 4 experts of 64, 2 used) so every GeneratorTests type stays fast.</summary>
    public override TestModelSpec Example => new()
    {
        Architecture = architecture,
        ExpertCount = 4,
        ExpertUsedCount = 2,
        ExpertFeedForwardLength = 64,
        SharedExpertFeedForwardLength = IsQwen3 ? null : 128,
        HeadDim = IsQwen3 ? 32 : null,
        RopeFreqBase = 1_000_000f,
        RmsNormEps = 1e-6f,
    };

    public override void Validate(TestModelSpec spec)
    {
        if (spec.ExpertCount <= 0) throw new ArgumentException($"{architecture} needs ExpertCount > 0");
        if (spec.RopeFreqFactors) throw new ArgumentException($"llama.cpp's {architecture} loader rejects rope_freqs.weight");
        if (spec.LeadingDenseLayers > 0) throw new ArgumentException($"{architecture} has no leading dense layers");
        if (IsQwen3 && spec.SharedExpertFeedForwardLength is not null) throw new ArgumentException("qwen3moe has no shared expert");
        if (!IsQwen3 && spec.HeadDim is not null && spec.HeadDim != spec.EmbeddingLength / spec.HeadCount)
            throw new ArgumentException("qwen2moe's attention is embedding_length wide: HeadDim must be EmbeddingLength / HeadCount");
        if (!IsQwen3 && spec.TiedEmbeddings) throw new ArgumentException("llama.cpp's qwen2moe loader requires output.weight");
    }

    public override void AddMetadata(GgufWriter writer, TestModelSpec spec)
    {
        var arch = architecture;
        if (IsQwen3)
        {
            writer.Add($"{arch}.attention.key_length", (uint)spec.EffectiveHeadDim)
                  .Add($"{arch}.attention.value_length", (uint)spec.EffectiveHeadDim);
        }
        LlamaTestWriter.AddExpertCounts(writer, arch, spec);
        writer.Add($"{arch}.expert_feed_forward_length", (uint)ExpertWidth(spec));
        if (!IsQwen3) writer.Add($"{arch}.expert_shared_feed_forward_length", (uint)SharedWidth(spec));
    }

    public override void AddLayer(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random)
    {
        LlamaTestWriter.AddAttention(writer, spec, layer, random, qkvBias: !IsQwen3, qkNorm: IsQwen3);
        var p = $"blk.{layer}.";
        long embd = spec.EmbeddingLength;
        writer.AddTensor(p + "ffn_norm.weight", [embd], TestTensors.Ones);
        LlamaTestWriter.AddExperts(writer, spec, layer, random, ExpertWidth(spec));
        if (IsQwen3) return;
        long shared = SharedWidth(spec);
        writer.AddTensor(p + "ffn_gate_inp_shexp.weight", [embd], random.Uniform(p + "ffn_gate_inp_shexp.weight"));
        writer.AddTensor(p + "ffn_gate_shexp.weight", [embd, shared], random.Uniform(p + "ffn_gate_shexp.weight"));
        writer.AddTensor(p + "ffn_up_shexp.weight", [embd, shared], random.Uniform(p + "ffn_up_shexp.weight"));
        writer.AddTensor(p + "ffn_down_shexp.weight", [shared, embd], random.Uniform(p + "ffn_down_shexp.weight"));
    }

    private static int ExpertWidth(TestModelSpec spec) => spec.ExpertFeedForwardLength ?? spec.FeedForwardLength;
    private static int SharedWidth(TestModelSpec spec) => spec.SharedExpertFeedForwardLength ?? spec.FeedForwardLength;
}
