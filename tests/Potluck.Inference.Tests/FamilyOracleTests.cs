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
        // Mixture-of-experts rows: 8 experts of 256, 2 used per token, split inside the expert stack.
        new("qwen3moe", OracleTests.Spec("qwen3moe") with { ExpertCount = 8, ExpertUsedCount = 2, ExpertFeedForwardLength = 256, HeadCount = 8, HeadDim = 64 },
            MoeTypes, MoeSplits),
        new("qwen2moe", OracleTests.Spec("qwen2moe") with { ExpertCount = 8, ExpertUsedCount = 2, ExpertFeedForwardLength = 256, SharedExpertFeedForwardLength = 256 },
            MoeTypes, MoeSplits),
        new("mixtral", OracleTests.Spec("llama") with { ExpertCount = 8, ExpertUsedCount = 2, FeedForwardLength = 256 },
            MoeTypes, MoeSplits),
        // DeepSeek V3 layout: q_lora, split attn_k_b/attn_v_b run absorbed over the latent cache, YaRN with its mscale,
        // two dense layers then experts with sigmoid gating, norm, scale, selection bias and group-limited routing.
        // Splits include the dense/expert boundary (2). Q5_K, Q3_K and IQ4_XS ride along for their kernels.
        new("deepseek2", DeepSeekV3Spec, [GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q3_K, GgmlType.IQ4_XS],
            [[4], [2, 4], [1, 3, 4]]),
        // DeepSeek V2-Lite layout: direct attn_q, legacy attn_kv_b (plain MHA cache), softmax gating without norm.
        new("deepseek2-lite", DeepSeekLiteSpec, [GgmlType.F16, GgmlType.Q8_0, GgmlType.Q6_K], [[4], [1, 4], [1, 2, 4]]),
    ];

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
        Assert.True(expectedTokens.Distinct().Count() > 1, "reference greedy output is degenerate; the test model is too weak");

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
}
