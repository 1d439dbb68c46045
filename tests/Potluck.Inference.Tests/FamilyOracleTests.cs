using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;

namespace Potluck.Inference.Tests;

/// <summary>
/// One row per (family, weight type): the span engine against llama.cpp on the same generated file, split into
/// spans at the row's boundaries (last-token logits within the oracle tolerance at every step, 32 greedy tokens
/// identical), then two interleaved sessions equal to each alone. Adding a family adds rows here.
/// </summary>
public sealed class FamilyOracleTests
{
    /// <summary>A family's oracle spec, the weight types it is tested in and the span boundaries (each split lists span ends).</summary>
    public sealed record Row(string Name, TestModelSpec Spec, GgmlType[] Types, int[][] Splits);

    private static readonly GgmlType[] MoeTypes = [GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_K];
    private static readonly int[][] MoeSplits = [[4], [2, 4], [1, 3, 4]];

    /// <summary>The rows; each family's spec keeps rows 256 wide so K-quant targets give real K-quant tensors.</summary>
    public static IReadOnlyList<Row> Rows { get; } =
    [
        new("qwen3", OracleTests.Spec("qwen3"), [GgmlType.Q8_0], [[2, 4]]),
        // Layers 0 and 2 slide (window 8 < 13-token prompt + 32 steps), 1 and 3 are global: every boundary
        // below separates a sliding from a global layer. MXFP4 is llama.cpp's MXFP4_MOE mix (experts MXFP4).
        new("gpt-oss", OracleTests.Spec("gpt-oss") with
        {
            ExpertCount = 4, ExpertUsedCount = 2, ExpertFeedForwardLength = 256, SlidingWindow = 8, RopeFreqBase = 150_000f,
        }, [GgmlType.F16, GgmlType.Q8_0, GgmlType.MXFP4, GgmlType.Q4_K], [[4], [1, 4], [2, 3, 4]]),
        // Mixture-of-experts rows: 8 experts of 256, 2 used per token, split inside the expert stack.
        new("qwen3moe", OracleTests.Spec("qwen3moe") with { ExpertCount = 8, ExpertUsedCount = 2, ExpertFeedForwardLength = 256, HeadCount = 8, HeadDim = 64 },
            MoeTypes, MoeSplits),
        new("qwen2moe", OracleTests.Spec("qwen2moe") with { ExpertCount = 8, ExpertUsedCount = 2, ExpertFeedForwardLength = 256, SharedExpertFeedForwardLength = 256 },
            MoeTypes, MoeSplits),
        new("mixtral", OracleTests.Spec("llama") with { ExpertCount = 8, ExpertUsedCount = 2, FeedForwardLength = 256 },
            MoeTypes, MoeSplits),
        // Layers 0-4 slide over 8 positions (the 13-token prompt and 32 steps run past it), layer 5 is global with
        // the file's base and linear scale; [5, 6] splits between the last sliding layer and the global one.
        new("gemma3", OracleTests.Spec("gemma3") with
        {
            LayerCount = 6, HeadDim = 64, SlidingWindow = 8,
            RopeFreqBase = 1_000_000f, RopeScalingFactor = 8f, RmsNormEps = 1e-6f,
        }, [GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_K], [[6], [5, 6], [2, 5, 6]]),
        // The optional keys b10221 reads: attention.sliding_window_pattern 2 (even layers slide, odd ones are global,
        // so every split crosses kinds), rope.freq_base_swa and final_logit_softcapping.
        new("gemma3-keys", OracleTests.Spec("gemma3") with
        {
            LayerCount = 4, HeadDim = 64, SlidingWindow = 12, SlidingWindowPattern = 2, RopeFreqBase = 1_000_000f,
            RopeFreqBaseSwa = 50_000f, FinalLogitSoftcapping = 3f, RmsNormEps = 1e-6f,
        }, [GgmlType.Q8_0], [[4], [1, 4], [1, 2, 4]]),
        // 62 layers is llama.cpp's 27B size, whose Q scale is 1/√(n_embd / n_head) (1/4 here), not 1/√head_dim.
        new("gemma3-27b-scale", new TestModelSpec
        {
            Architecture = "gemma3", EmbeddingLength = 64, LayerCount = 62, HeadCount = 4, KvHeadCount = 2, HeadDim = 32,
            FeedForwardLength = 128, ContextLength = 256, SlidingWindow = 8, RopeFreqBase = 1_000_000f, RmsNormEps = 1e-6f, Seed = 7,
        }, [GgmlType.Q8_0], [[62], [30, 62]]),
        // No attention.sliding_window: every layer global (llama.cpp's non-SWA gemma3 graph), softcapped.
        new("gemma3-global", OracleTests.Spec("gemma3") with
        {
            LayerCount = 4, HeadDim = 64, RopeFreqBase = 1_000_000f, FinalLogitSoftcapping = 5f, RmsNormEps = 1e-6f,
        }, [GgmlType.Q8_0], [[4], [2, 4]]),
        // LongRoPE trained at 128 of 512 positions: llama.cpp's 256-position context (and each 256-position session)
        // takes rope_factors_long, with the converter's attention factor. The sliding window is written and ignored.
        new("phi3", Phi3Spec(512, 128), [GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_K], [[4], [2, 4], [1, 3, 4]]),
        // Original context 512 above the 256 used: rope_factors_short.
        new("phi3-short", Phi3Spec(4096, 512), [GgmlType.Q8_0], [[4], [1, 4]]),
        // DeepSeek V3 layout: q_lora, split attn_k_b/attn_v_b run absorbed over the latent cache, YaRN with its mscale,
        // two dense layers then experts with sigmoid gating, norm, scale, selection bias and group-limited routing.
        // Splits include the dense/expert boundary (2). Q5_K, Q3_K and IQ4_XS ride along for their kernels.
        new("deepseek2", DeepSeekV3Spec, [GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q3_K, GgmlType.IQ4_XS],
            [[4], [2, 4], [1, 3, 4]]),
        // DeepSeek V2-Lite layout: direct attn_q, legacy attn_kv_b (plain MHA cache), softmax gating without norm.
        new("deepseek2-lite", DeepSeekLiteSpec, [GgmlType.F16, GgmlType.Q8_0, GgmlType.Q6_K], [[4], [1, 4], [1, 2, 4]]),
    ];

    private static TestModelSpec Phi3Spec(int context, int original) => OracleTests.Spec("phi3") with
    {
        ContextLength = context, RopeOriginalContextLength = original, SlidingWindow = 8,
    };

    internal static TestModelSpec DeepSeekV3Spec => new()
    {
        Architecture = "deepseek2",
        EmbeddingLength = 256,
        LayerCount = 4,
        HeadCount = 4,
        KvHeadCount = 1,
        FeedForwardLength = 512,
        ContextLength = 256,
        Seed = 7,
        QueryLoraRank = 256,
        KvLoraRank = 256,
        NopeHeadDim = 64,
        RopeHeadDim = 32,
        ValueHeadDim = 64,
        LeadingDenseLayers = 2,
        ExpertCount = 8,
        ExpertUsedCount = 2,
        ExpertFeedForwardLength = 256,
        SharedExpertFeedForwardLength = 256,
        ExpertGatingFunc = 2,
        ExpertWeightsNorm = true,
        ExpertWeightsScale = 2.5f,
        ExpertSelectionBias = true,
        ExpertGroupCount = 4,
        ExpertGroupUsedCount = 2,
        RopeYarnFactor = 4f,
        RopeYarnLogMultiplier = 0.1f,
        RopeYarnOriginalContext = 64,
        RmsNormEps = 1e-6f,
    };

    internal static TestModelSpec DeepSeekLiteSpec => new()
    {
        Architecture = "deepseek2",
        EmbeddingLength = 256,
        LayerCount = 4,
        HeadCount = 4,
        KvHeadCount = 4,
        FeedForwardLength = 512,
        ContextLength = 256,
        Seed = 7,
        KvLoraRank = 256,
        NopeHeadDim = 64,
        RopeHeadDim = 32,
        ValueHeadDim = 64,
        LegacyKvB = true,
        LeadingDenseLayers = 1,
        ExpertCount = 8,
        ExpertUsedCount = 2,
        ExpertFeedForwardLength = 256,
        SharedExpertFeedForwardLength = 512,
        ExpertGatingFunc = 1,
        RmsNormEps = 1e-6f,
    };

    public static TheoryData<string, GgmlType> Cases()
    {
        var data = new TheoryData<string, GgmlType>();
        foreach (var row in Rows)
            foreach (var type in row.Types)
                data.Add(row.Name, type);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void SpansMatchLlamaCpp(string name, GgmlType type)
    {
        var row = Rows.Single(r => r.Name == name);
        var path = TestModels.Get(row.Spec, type);
        var (expectedTokens, expectedLogits) = OracleTests.RunReference(path);
        Assert.True(expectedTokens.Distinct().Count() > 1, $"reference greedy output is degenerate ({string.Join(",", expectedTokens)}); the test model is too weak");

        using var model = GgufModel.Open(path);
        using var head = new ModelHead(model, 2);
        foreach (var split in row.Splits)
        {
            var spans = OracleTests.MakeSpans(model, split);
            try
            {
                var pipeline = new LocalPipeline(head, spans);
                var (tokens, logits) = OracleTests.RunPipeline(pipeline, $"s-{string.Join('-', split)}", head.VocabSize);
                var what = $"{name} {type} split [{string.Join(", ", split)}]";
                for (var step = 0; step < logits.Count; step++)
                    OracleTests.AssertClose(expectedLogits[step], logits[step], $"{what} step {step}");
                Assert.Equal(expectedTokens, tokens);
            }
            finally
            {
                foreach (var s in spans) s.Dispose();
            }
        }

        // Two sessions through the same spans, steps alternating: each equals its run alone.
        var interleavedSpans = OracleTests.MakeSpans(model, row.Splits[^1]);
        try
        {
            var pipeline = new LocalPipeline(head, interleavedSpans);
            var (a, b) = OracleTests.RunInterleaved(pipeline, head.VocabSize);
            Assert.Equal(expectedTokens, a);
            var (alone, _) = OracleTests.RunPipeline(pipeline, "b-alone", head.VocabSize, OracleTests.SecondPrompt);
            Assert.Equal(alone, b);
        }
        finally
        {
            foreach (var s in interleavedSpans) s.Dispose();
        }
    }

    /// <summary>
    /// A LongRoPE session over the original context (long factors) and one within it (short factors) in one step
    /// equal each run alone: the span ropes each session's rows with its own factors.
    /// </summary>
    [Fact]
    public void Phi3SessionsWithLongAndShortFactorsShareAStep()
    {
        var path = TestModels.Get(Phi3Spec(512, 128), GgmlType.Q8_0);
        using var model = GgufModel.Open(path);
        using var head = new ModelHead(model, 2);
        using var span = new LayerSpan(model, 0, model.Info.LayerCount, new SpanOptions { Threads = 2 });
        int[] a = [1, 3 + 'H', 3 + 'i', 3 + '!'], b = [1, 3 + 'Y', 3 + 'o'];
        float[] Hidden(int[] tokens)
        {
            var h = new float[tokens.Length * head.Width];
            head.Embed(tokens, h);
            return h;
        }
        float[] Alone(string id, int capacity, int[] tokens)
        {
            span.OpenSession(id, capacity);
            var output = new float[head.Width];
            span.Forward([new SpanSegment(id, 0, tokens.Length, LastRowOnly: true)], Hidden(tokens), output);
            span.CloseSession(id);
            return output;
        }
        var longAlone = Alone("long", 256, a);
        var shortAlone = Alone("short", 64, b);
        Assert.NotEqual(longAlone, Alone("long-as-short", 64, a)); // the factors differ, so the choice shows

        span.OpenSession("l", 256);
        span.OpenSession("s", 64);
        var both = new float[2 * head.Width];
        span.Forward([new SpanSegment("l", 0, a.Length, true), new SpanSegment("s", 0, b.Length, true)], [.. Hidden(a), .. Hidden(b)], both);
        OracleTests.AssertClose(longAlone, both[..head.Width], "long-context session");
        OracleTests.AssertClose(shortAlone, both[head.Width..], "short-context session");
    }
}
