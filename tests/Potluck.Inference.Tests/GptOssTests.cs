using Potluck.Inference.Engine;
using Potluck.Inference.Families;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;

namespace Potluck.Inference.Tests;

/// <summary>The gpt-oss generator's file layout and the family's reading of it (the oracle rows check the graph).</summary>
public sealed class GptOssTests
{
    private static readonly TestModelSpec Spec = TestModelSpec.ForArchitecture("gpt-oss");

    [Fact]
    public void WritesTheTensorsAndKeysLlamaCppsGptOssLoaderReads()
    {
        var header = GgufHeader.Read(TestModels.Get(Spec, GgmlType.F32));
        Assert.Equal("gpt-oss", header.Metadata["general.architecture"]);
        Assert.Equal((uint)Spec.SlidingWindow!, header.Metadata["gpt-oss.attention.sliding_window"]);
        Assert.Equal((uint)Spec.ExpertCount, header.Metadata["gpt-oss.expert_count"]);
        Assert.Equal((uint)Spec.ExpertUsedCount, header.Metadata["gpt-oss.expert_used_count"]);
        Assert.Equal((uint)Spec.ExpertFeedForwardLength!, header.Metadata["gpt-oss.expert_feed_forward_length"]);
        Assert.Equal("yarn", header.Metadata["gpt-oss.rope.scaling.type"]);
        Assert.Equal(32f, header.Metadata["gpt-oss.rope.scaling.factor"]);
        Assert.Equal(4096u, header.Metadata["gpt-oss.rope.scaling.original_context_length"]);

        long embd = Spec.EmbeddingLength, ff = Spec.ExpertFeedForwardLength!.Value, n = Spec.ExpertCount;
        Assert.Equal([Spec.HeadCount], header.Tensors["blk.0.attn_sinks.weight"].Shape);
        Assert.Equal([embd], header.Tensors["blk.1.post_attention_norm.weight"].Shape);
        Assert.Equal([embd, n], header.Tensors["blk.0.ffn_gate_inp.weight"].Shape);
        Assert.Equal([n], header.Tensors["blk.0.ffn_gate_inp.bias"].Shape);
        Assert.Equal([embd, ff, n], header.Tensors["blk.0.ffn_gate_exps.weight"].Shape);
        Assert.Equal([ff, embd, n], header.Tensors["blk.0.ffn_down_exps.weight"].Shape);
        Assert.Equal([embd, n], header.Tensors["blk.0.ffn_down_exps.bias"].Shape);
        Assert.Equal([ff, n], header.Tensors["blk.0.ffn_up_exps.bias"].Shape);
        Assert.True(header.Tensors.ContainsKey("blk.3.attn_output.bias"));
        Assert.True(header.Tensors.ContainsKey("output.weight"));
        Assert.False(header.Tensors.ContainsKey("blk.0.ffn_norm.weight"));
    }

    [Fact]
    public void ReadsAlternatingWindowsAndYarnAsLlamaCppDerivesThem()
    {
        var info = GgufModel.Inspect(TestModels.Get(Spec, GgmlType.F32));
        var p = Assert.IsType<GptOssParameters>(info.Parameters);
        // set_swa_pattern(2): even layers slide, odd layers are global.
        Assert.Equal([8, null, 8, null], info.KvLayers.Select(k => k.Window).ToArray());
        Assert.Equal(RopeScaling.Yarn, info.RopeScaling);
        Assert.Equal(1f / 32f, info.RopeFreqScale);
        Assert.Equal(1f, p.ExtFactor);
        Assert.Equal(4096, p.YarnOriginalContext);
        // get_mscale(32, 1) · 1/(1 + 0.1 ln 32): ggml_rope_ext's own mscale is the only one left.
        Assert.InRange(p.AttnFactor, 1f - 1e-6f, 1f + 1e-6f);
    }

    [Fact]
    public void Mxfp4FilesHoldMxfp4ExpertsAndQ8_0Elsewhere()
    {
        var spec = FamilyOracleTests.Rows.Single(r => r.Name == "gpt-oss").Spec;
        var header = GgufHeader.Read(TestModels.Get(spec, GgmlType.MXFP4));
        Assert.Equal(GgmlType.MXFP4, header.Tensors["blk.0.ffn_up_exps.weight"].Type);
        Assert.Equal(GgmlType.MXFP4, header.Tensors["blk.3.ffn_down_exps.weight"].Type);
        Assert.Equal(GgmlType.Q8_0, header.Tensors["blk.0.attn_q.weight"].Type);
        Assert.Equal(GgmlType.F32, header.Tensors["blk.0.attn_sinks.weight"].Type);
        Assert.Equal(GgmlType.MXFP4, GgufModel.Inspect(header.Path).WeightType);
    }
}
