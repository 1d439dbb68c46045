using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;

namespace Potluck.Inference.Tests;

/// <summary>deepseek2 specifics beyond the oracle rows: what the latent cache holds, and the two tensor layouts.</summary>
public sealed class DeepSeek2Tests
{
    private static readonly int[] PromptA = [1, 3 + 'T', 3 + 'h', 3 + 'e', 3 + ' ', 3 + 'c', 3 + 'a', 3 + 't'];

    [Fact]
    public void LatentLayoutCachesOneCompressedRowPerPositionAndLegacyCachesEveryHead()
    {
        var latent = FamilyOracleTests.DeepSeekV3Spec;
        var info = GgufModel.Inspect(TestModels.Get(latent, GgmlType.F32));
        // kv_lora_rank 256 + rope 32, V read as the first 256 columns: 576 bytes a position per layer in F16.
        Assert.All(info.KvLayers, kv => Assert.Equal(new Families.LayerKv(288, 256, null, ValueSharesKey: true), kv));
        Assert.Equal(4 * 2 * 288, info.KvLayers.Sum(k => k.BytesPerToken));

        var legacy = GgufModel.Inspect(TestModels.Get(FamilyOracleTests.DeepSeekLiteSpec, GgmlType.F32));
        Assert.All(legacy.KvLayers, kv => Assert.Equal(new Families.LayerKv(4 * 96, 4 * 64, null), kv));
    }

    [Fact]
    public void GeneratorWritesTheSplitLayoutByDefaultAndTheLegacyOneOnRequest()
    {
        var split = GgufHeader.Read(TestModels.Get(FamilyOracleTests.DeepSeekV3Spec, GgmlType.F32));
        // As convert_hf_to_gguf writes MLA today: one KV head of kv_lora_rank + rope, the decompressed sizes in *_mla.
        Assert.Equal(1u, split.Metadata["deepseek2.attention.head_count_kv"]);
        Assert.Equal(288u, split.Metadata["deepseek2.attention.key_length"]);
        Assert.Equal(256u, split.Metadata["deepseek2.attention.value_length"]);
        Assert.Equal(96u, split.Metadata["deepseek2.attention.key_length_mla"]);
        Assert.Equal(64u, split.Metadata["deepseek2.attention.value_length_mla"]);
        Assert.Equal(new long[] { 64, 256, 4 }, split.Tensors["blk.0.attn_k_b.weight"].Shape);
        Assert.Equal(new long[] { 256, 64, 4 }, split.Tensors["blk.0.attn_v_b.weight"].Shape);
        Assert.False(split.Tensors.ContainsKey("blk.0.attn_kv_b.weight"));
        Assert.True(split.Tensors.ContainsKey("blk.0.attn_q_a.weight"));
        Assert.False(split.Tensors.ContainsKey("blk.1.ffn_gate_inp.weight")); // leading dense layers
        Assert.True(split.Tensors.ContainsKey("blk.2.exp_probs_b.bias"));

        var legacy = GgufHeader.Read(TestModels.Get(FamilyOracleTests.DeepSeekLiteSpec, GgmlType.F32));
        Assert.Equal(4u, legacy.Metadata["deepseek2.attention.head_count_kv"]);
        Assert.Equal(96u, legacy.Metadata["deepseek2.attention.key_length"]);
        Assert.False(legacy.Metadata.ContainsKey("deepseek2.attention.key_length_mla"));
        Assert.Equal(new long[] { 256, 4 * (64 + 64) }, legacy.Tensors["blk.0.attn_kv_b.weight"].Shape);
        Assert.False(legacy.Tensors.ContainsKey("blk.0.attn_k_b.weight"));
        Assert.True(legacy.Tensors.ContainsKey("blk.0.attn_q.weight"));
    }

    [Fact]
    public void SplitAndLegacyLayoutsOfOneSpecHoldTheSameModel()
    {
        // The generator derives attn_k_b/attn_v_b from the same logical attn_kv_b it writes for legacy files.
        var split = FamilyOracleTests.DeepSeekV3Spec;
        var legacy = split with { LegacyKvB = true, KvHeadCount = split.HeadCount };
        var a = Run(TestModels.Get(split, GgmlType.F32));
        var b = Run(TestModels.Get(legacy, GgmlType.F32));
        // Close, not bit-equal: absorbed attention caches the latent in F16 where legacy caches decompressed K/V, and
        // associates the products differently. llama.cpp's own two layouts differ by the same amount (1.4e-2 at prefill).
        var worst = a.Logits.Zip(b.Logits).Max(s => s.First.Zip(s.Second).Max(p => MathF.Abs(p.First - p.Second)));
        Assert.True(worst < 0.05f, $"max |Δlogit| between the layouts = {worst}");
        Assert.Equal(a.Tokens, b.Tokens);
    }

    [Fact]
    public void BatchedSessionsInOneStepMatchEachAlone()
    {
        // Two sessions' rows in one graph: per-session latent attention, then attn_v_b and the experts over all rows.
        using var model = GgufModel.Open(TestModels.Get(FamilyOracleTests.DeepSeekV3Spec, GgmlType.Q8_0));
        using var head = new ModelHead(model, 2);
        var spans = OracleTests.MakeSpans(model, [2, 4]);
        try
        {
            var pipeline = new LocalPipeline(head, spans);
            var (aloneA, logitsA) = OracleTests.RunPipeline(pipeline, "alone-a", head.VocabSize, PromptA);
            var (aloneB, logitsB) = OracleTests.RunPipeline(pipeline, "alone-b", head.VocabSize, OracleTests.SecondPrompt);

            foreach (var s in spans)
            {
                s.OpenSession("x", 256);
                s.OpenSession("y", 256);
            }
            int[] x = PromptA, y = OracleTests.SecondPrompt;
            int px = 0, py = 0, width = head.Width, vocab = head.VocabSize;
            var logits = new float[2 * vocab];
            for (var step = 0; step < aloneA.Count; step++)
            {
                var current = new float[(x.Length + y.Length) * width];
                head.Embed(x, current.AsSpan(0, x.Length * width));
                head.Embed(y, current.AsSpan(x.Length * width));
                foreach (var span in spans)
                {
                    SpanSegment[] segments = [new("x", px, x.Length, span.IsFinal), new("y", py, y.Length, span.IsFinal)];
                    var output = new float[(segments[0].OutputRows + segments[1].OutputRows) * width];
                    span.Forward(segments, current, output);
                    current = output;
                }
                head.Logits(current, 2, logits);
                OracleTests.AssertClose(logitsA[step], logits.AsSpan(0, vocab).ToArray(), $"x step {step}");
                OracleTests.AssertClose(logitsB[step], logits.AsSpan(vocab).ToArray(), $"y step {step}");
                (px, py) = (px + x.Length, py + y.Length);
                (x, y) = ([aloneA[step]], [aloneB[step]]);
            }
        }
        finally
        {
            foreach (var s in spans) s.Dispose();
        }
    }

    private static (List<int> Tokens, List<float[]> Logits) Run(string path)
    {
        using var model = GgufModel.Open(path);
        using var head = new ModelHead(model, 2);
        var spans = OracleTests.MakeSpans(model, [2, 4]);
        try
        {
            return OracleTests.RunPipeline(new LocalPipeline(head, spans), "layout", head.VocabSize);
        }
        finally
        {
            foreach (var s in spans) s.Dispose();
        }
    }
}
