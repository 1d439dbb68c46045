using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;
using Potluck.Reference;

namespace Potluck.Inference.Tests;

/// <summary>
/// The span engine against llama.cpp on the same file: prompt prefill plus 32 greedy decode steps, for every
/// architecture and weight type, split into 1, 2 and 3 spans at several boundaries.
/// </summary>
public sealed class OracleTests
{
    private const float Tolerance = 1e-4f;
    private const int DecodeSteps = 32;
    private const int Threads = 2;

    /// <summary>Rows 256 wide so K-quant targets produce real K-quant tensors, not fallbacks.</summary>
    internal static TestModelSpec Spec(string architecture) => new()
    {
        Architecture = architecture,
        EmbeddingLength = 256,
        LayerCount = 4,
        HeadCount = 4,
        KvHeadCount = 2,
        FeedForwardLength = 512,
        ContextLength = 256,
        Seed = 7,
    };

    private static readonly int[][] Splits = [[4], [1, 4], [3, 4], [1, 3, 4], [2, 3, 4]];
    private static readonly int[] Prompt = [1, 3 + 'H', 3 + 'e', 3 + 'l', 3 + 'l', 3 + 'o', 3 + ',', 3 + ' ', 3 + 'w', 3 + 'o', 3 + 'r', 3 + 'l', 3 + 'd'];

    public static TheoryData<string, GgmlType> Cases()
    {
        var data = new TheoryData<string, GgmlType>();
        foreach (var arch in new[] { "llama", "mistral", "qwen2", "qwen3" })
            foreach (var type in new[] { GgmlType.F32, GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_K })
                data.Add(arch, type);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void SpansMatchLlamaCpp(string architecture, GgmlType type)
    {
        var path = TestModels.Get(Spec(architecture), type);
        var (expectedTokens, expectedLogits) = RunReference(path);
        Assert.True(expectedTokens.Distinct().Count() > 1, "reference greedy output is degenerate; the test model is too weak");

        using var model = GgufModel.Open(path);
        using var head = new ModelHead(model, Threads);
        foreach (var split in Splits)
        {
            var spans = MakeSpans(model, split);
            try
            {
                var (tokens, logits) = RunPipeline(new LocalPipeline(head, spans), $"s-{string.Join('-', split)}", head.VocabSize);
                var name = $"{architecture} {type} split [{string.Join(", ", split)}]";
                for (var step = 0; step < logits.Count; step++)
                    AssertClose(expectedLogits[step], logits[step], $"{name} step {step}");
                Assert.Equal(expectedTokens, tokens);
            }
            finally
            {
                foreach (var s in spans) s.Dispose();
            }
        }
    }

    [Fact]
    public void TiedEmbeddingsAndRopeFactorsMatchLlamaCpp()
    {
        var spec = Spec("llama") with { TiedEmbeddings = true, RopeFreqFactors = true, RopeFreqBase = 500000f };
        var path = TestModels.Get(spec, GgmlType.Q8_0);
        var (expectedTokens, expectedLogits) = RunReference(path);
        using var model = GgufModel.Open(path);
        Assert.True(model.Info.TiedEmbeddings);
        Assert.True(model.Info.HasRopeFreqFactors);
        using var head = new ModelHead(model, Threads);
        var spans = MakeSpans(model, [2, 4]);
        try
        {
            var (tokens, logits) = RunPipeline(new LocalPipeline(head, spans), "tied", head.VocabSize);
            for (var step = 0; step < logits.Count; step++) AssertClose(expectedLogits[step], logits[step], $"step {step}");
            Assert.Equal(expectedTokens, tokens);
        }
        finally
        {
            foreach (var s in spans) s.Dispose();
        }
    }

    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q6_K)]
    public void OtherQuantTypesMatchLlamaCpp(GgmlType type)
    {
        var path = TestModels.Get(Spec("llama"), type);
        var (expectedTokens, expectedLogits) = RunReference(path);
        using var model = GgufModel.Open(path);
        using var head = new ModelHead(model, Threads);
        var spans = MakeSpans(model, [1, 3, 4]);
        try
        {
            var (tokens, logits) = RunPipeline(new LocalPipeline(head, spans), "q", head.VocabSize);
            for (var step = 0; step < logits.Count; step++) AssertClose(expectedLogits[step], logits[step], $"{type} step {step}");
            Assert.Equal(expectedTokens, tokens);
        }
        finally
        {
            foreach (var s in spans) s.Dispose();
        }
    }

    internal static LayerSpan[] MakeSpans(GgufModel model, int[] ends)
    {
        var spans = new LayerSpan[ends.Length];
        for (var i = 0; i < ends.Length; i++)
            spans[i] = new LayerSpan(model, i == 0 ? 0 : ends[i - 1], ends[i], new SpanOptions { Threads = Threads });
        return spans;
    }

    internal static (List<int> Tokens, List<float[]> Logits) RunReference(string path)
    {
        using var reference = new LlamaCppReference(path, contextSize: 256, threads: Threads);
        var tokens = new List<int>();
        var logits = new List<float[]>();
        var current = new float[reference.VocabSize];
        reference.Evaluate(Prompt, current);
        for (var step = 0; step <= DecodeSteps; step++)
        {
            logits.Add((float[])current.Clone());
            var next = LlamaCppReference.ArgMax(current);
            tokens.Add(next);
            if (step < DecodeSteps) reference.Evaluate([next], current);
        }
        return (tokens, logits);
    }

    internal static readonly int[] SecondPrompt = [1, 3 + 'A', 3 + ' ', 3 + 'd', 3 + 'o', 3 + 'g', 3 + ' ', 3 + 'r', 3 + 'a', 3 + 'n', 3 + '!'];

    internal static (List<int> Tokens, List<float[]> Logits) RunPipeline(LocalPipeline pipeline, string session, int vocab, int[]? prompt = null)
    {
        prompt ??= Prompt;
        pipeline.OpenSession(session, 256);
        var tokens = new List<int>();
        var logits = new List<float[]>();
        var current = new float[vocab];
        pipeline.Evaluate(session, 0, prompt, current);
        var position = prompt.Length;
        for (var step = 0; step <= DecodeSteps; step++)
        {
            logits.Add((float[])current.Clone());
            var next = LlamaCppReference.ArgMax(current);
            tokens.Add(next);
            if (step < DecodeSteps) pipeline.Evaluate(session, position++, [next], current);
        }
        pipeline.CloseSession(session);
        return (tokens, logits);
    }

    /// <summary>Greedy decode of <see cref="Prompt"/> and <see cref="SecondPrompt"/> in two sessions whose steps alternate.</summary>
    internal static (List<int> A, List<int> B) RunInterleaved(LocalPipeline pipeline, int vocab)
    {
        pipeline.OpenSession("i-a", 256);
        pipeline.OpenSession("i-b", 256);
        var la = new float[vocab];
        var lb = new float[vocab];
        pipeline.Evaluate("i-a", 0, Prompt, la);
        pipeline.Evaluate("i-b", 0, SecondPrompt, lb);
        int pa = Prompt.Length, pb = SecondPrompt.Length;
        List<int> a = [], b = [];
        for (var step = 0; step <= DecodeSteps; step++)
        {
            var na = LlamaCppReference.ArgMax(la);
            var nb = LlamaCppReference.ArgMax(lb);
            a.Add(na);
            b.Add(nb);
            if (step == DecodeSteps) break;
            pipeline.Evaluate("i-a", pa++, [na], la);
            pipeline.Evaluate("i-b", pb++, [nb], lb);
        }
        pipeline.CloseSession("i-a");
        pipeline.CloseSession("i-b");
        return (a, b);
    }

    internal static void AssertClose(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        var worst = 0f;
        var at = 0;
        for (var i = 0; i < expected.Length; i++)
        {
            var d = MathF.Abs(expected[i] - actual[i]);
            if (!(d <= worst)) { worst = d; at = i; }
        }
        Assert.True(worst <= Tolerance, $"{what}: max |Δlogit| = {worst} at token {at} (llama.cpp {expected[at]}, span {actual[at]}) exceeds {Tolerance}");
    }
}
