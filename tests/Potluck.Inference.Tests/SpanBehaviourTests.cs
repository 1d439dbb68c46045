using System.Globalization;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;
using Potluck.Reference;
using Xunit.Abstractions;

namespace Potluck.Inference.Tests;

/// <summary>Sessions sharing spans, KV budgets and truncation, and what a span binds.</summary>
public sealed class SpanBehaviourTests(ITestOutputHelper output)
{
    private static readonly int[] PromptA = [1, 3 + 'T', 3 + 'h', 3 + 'e', 3 + ' ', 3 + 'c', 3 + 'a', 3 + 't'];
    private static readonly int[] PromptB = [1, 3 + 'A', 3 + ' ', 3 + 'd', 3 + 'o', 3 + 'g', 3 + ' ', 3 + 'r', 3 + 'a', 3 + 'n', 3 + '!'];

    [Fact]
    public void InterleavedAndBatchedSessionsMatchEachAlone()
    {
        var path = TestModels.Get(OracleTests.Spec("qwen2"), GgmlType.Q8_0);
        using var model = GgufModel.Open(path);
        using var head = new ModelHead(model, 2);
        var spans = OracleTests.MakeSpans(model, [1, 3, 4]);
        try
        {
            var alone = new List<int>[2];
            var aloneLogits = new List<float[]>[2];
            var pipeline = new LocalPipeline(head, spans);
            (alone[0], aloneLogits[0]) = Greedy(pipeline, "alone-a", PromptA, 12);
            (alone[1], aloneLogits[1]) = Greedy(pipeline, "alone-b", PromptB, 12);

            // Interleaved: alternate single-session steps of two open sessions through the same span objects.
            var (tokensA, tokensB, logitsA, logitsB) = Interleaved(pipeline, 12);
            Assert.Equal(alone[0], tokensA);
            Assert.Equal(alone[1], tokensB);
            for (var i = 0; i < logitsA.Count; i++)
            {
                OracleTests.AssertClose(aloneLogits[0][i], logitsA[i], $"interleaved A step {i}");
                OracleTests.AssertClose(aloneLogits[1][i], logitsB[i], $"interleaved B step {i}");
            }

            // Batched: both sessions' rows in one step per span (two segments per graph).
            var (batchedA, batchedB) = Batched(head, spans, 12);
            Assert.Equal(alone[0], batchedA);
            Assert.Equal(alone[1], batchedB);
        }
        finally
        {
            foreach (var s in spans) s.Dispose();
        }
    }

    private static (List<int>, List<float[]>) Greedy(LocalPipeline pipeline, string id, int[] prompt, int steps)
    {
        pipeline.OpenSession(id, 128);
        var logits = new float[OracleTests.Spec("qwen2").EmbeddingLength > 0 ? TestModelGenerator.Vocab.Size : 0];
        var tokens = new List<int>();
        var all = new List<float[]>();
        pipeline.Evaluate(id, 0, prompt, logits);
        var pos = prompt.Length;
        for (var i = 0; i < steps; i++)
        {
            all.Add((float[])logits.Clone());
            var next = LlamaCppReference.ArgMax(logits);
            tokens.Add(next);
            pipeline.Evaluate(id, pos++, [next], logits);
        }
        pipeline.CloseSession(id);
        return (tokens, all);
    }

    private static (List<int>, List<int>, List<float[]>, List<float[]>) Interleaved(LocalPipeline pipeline, int steps)
    {
        pipeline.OpenSession("a", 128);
        pipeline.OpenSession("b", 128);
        var la = new float[TestModelGenerator.Vocab.Size];
        var lb = new float[TestModelGenerator.Vocab.Size];
        pipeline.Evaluate("a", 0, PromptA, la);
        pipeline.Evaluate("b", 0, PromptB, lb);
        int pa = PromptA.Length, pb = PromptB.Length;
        List<int> ta = [], tb = [];
        List<float[]> allA = [], allB = [];
        for (var i = 0; i < steps; i++)
        {
            allA.Add((float[])la.Clone());
            allB.Add((float[])lb.Clone());
            var na = LlamaCppReference.ArgMax(la);
            var nb = LlamaCppReference.ArgMax(lb);
            ta.Add(na);
            tb.Add(nb);
            pipeline.Evaluate("b", pb++, [nb], lb);
            pipeline.Evaluate("a", pa++, [na], la);
        }
        pipeline.CloseSession("a");
        pipeline.CloseSession("b");
        return (ta, tb, allA, allB);
    }

    private static (List<int>, List<int>) Batched(ModelHead head, LayerSpan[] spans, int steps)
    {
        var width = head.Width;
        foreach (var s in spans)
        {
            s.OpenSession("x", 128);
            s.OpenSession("y", 128);
        }
        int[] tokensX = PromptA, tokensY = PromptB;
        int px = 0, py = 0;
        List<int> outX = [], outY = [];
        var logits = new float[2 * head.VocabSize];
        for (var step = 0; step <= steps; step++)
        {
            var rows = tokensX.Length + tokensY.Length;
            var input = new float[rows * width];
            head.Embed(tokensX, input.AsSpan(0, tokensX.Length * width));
            head.Embed(tokensY, input.AsSpan(tokensX.Length * width));
            float[] current = input;
            foreach (var span in spans)
            {
                SpanSegment[] segments =
                [
                    new("x", px, tokensX.Length, span.IsFinal),
                    new("y", py, tokensY.Length, span.IsFinal),
                ];
                var output = new float[(segments[0].OutputRows + segments[1].OutputRows) * width];
                span.Forward(segments, current, output);
                current = output;
            }
            head.Logits(current, 2, logits);
            px += tokensX.Length;
            py += tokensY.Length;
            var nx = LlamaCppReference.ArgMax(logits.AsSpan(0, head.VocabSize));
            var ny = LlamaCppReference.ArgMax(logits.AsSpan(head.VocabSize));
            if (step == steps) break;
            outX.Add(nx);
            outY.Add(ny);
            tokensX = [nx];
            tokensY = [ny];
        }
        foreach (var s in spans) s.Dispose();
        return (outX, outY);
    }

    [Fact]
    public void TruncateRewindsSoTheSameStepGivesTheSameLogits()
    {
        using var model = GgufModel.Open(TestModels.Get(OracleTests.Spec("llama"), GgmlType.Q8_0));
        using var head = new ModelHead(model, 2);
        using var span = new LayerSpan(model, 0, 4, new SpanOptions { Threads = 2 });
        span.OpenSession("t", 64);
        var width = head.Width;
        var prompt = new float[PromptA.Length * width];
        head.Embed(PromptA, prompt);
        var first = new float[width];
        span.Forward([new SpanSegment("t", 0, PromptA.Length, LastRowOnly: true)], prompt, first);
        Assert.Equal(PromptA.Length, span.SessionLength("t"));

        span.Truncate("t", 3);
        Assert.Equal(3, span.SessionLength("t"));
        var again = new float[width];
        span.Forward([new SpanSegment("t", 3, PromptA.Length - 3, LastRowOnly: true)], prompt.AsSpan(3 * width), again);
        Assert.Equal(first, again);
    }

    [Fact]
    public void KvBudgetRefusesWhatDoesNotFitAndFreesOnClose()
    {
        using var model = GgufModel.Open(TestModels.Get(OracleTests.Spec("llama"), GgmlType.Q8_0));
        using var span = new LayerSpan(model, 1, 3, new SpanOptions { Threads = 1, KvBudgetTokens = 200 });
        Assert.Equal(2L * 2 * 128 * 2, span.KvBytesPerToken); // K+V, 2 layers, 2 KV heads of 64, F16
        // Opening charges one block, not the whole session.
        span.OpenSession("one", 150);
        Assert.Equal(200 - LayerSpan.KvBlockTokens, span.FreeKvTokens);
        span.OpenSession("two", 100);
        Assert.Equal(200 - 2 * LayerSpan.KvBlockTokens, span.FreeKvTokens);
        // Growing "one" to its 150 positions needs 86 more: the budget has 72.
        var refusal = Assert.Throws<KvBudgetExceededException>(() => span.Reserve("one", 150));
        Assert.Contains("needs 86 more positions and 72 of 200 are free", refusal.Message);
        Assert.Equal(200 - 2 * LayerSpan.KvBlockTokens, span.FreeKvTokens);
        span.Reserve("one", 128);
        Assert.Equal(200 - 3 * LayerSpan.KvBlockTokens, span.FreeKvTokens);
        Assert.True(span.CloseSession("one"));
        Assert.False(span.CloseSession("one"));
        Assert.Equal(200 - LayerSpan.KvBlockTokens, span.FreeKvTokens);
        Assert.Equal(["two"], span.Sessions);
    }

    /// <summary>A step whose sessions need more blocks than are free fails before it computes: nothing moves.</summary>
    [Fact]
    public void A_step_past_the_budget_fails_whole_and_truncating_gives_blocks_back()
    {
        using var model = GgufModel.Open(TestModels.Get(OracleTests.Spec("llama"), GgmlType.Q8_0));
        using var span = new LayerSpan(model, 1, 3, new SpanOptions { Threads = 1, KvBudgetTokens = 3 * LayerSpan.KvBlockTokens });
        var width = span.Width;
        span.OpenSession("a", 256);
        span.OpenSession("b", 256);
        var rows = new float[100 * width];
        for (var i = 0; i < rows.Length; i++) rows[i] = MathF.Sin(i) * 0.1f;
        var output = new float[200 * width];
        // a and b each need a second block: 4 blocks against a budget of 3.
        Assert.Throws<KvBudgetExceededException>(() => span.Forward(
            [new SpanSegment("a", 0, 100), new SpanSegment("b", 0, 100)], new float[200 * width].AsSpan(), output));
        Assert.Equal(0, span.SessionLength("a"));
        Assert.Equal(0, span.SessionLength("b"));
        Assert.Equal(LayerSpan.KvBlockTokens, span.FreeKvTokens);
        span.Forward([new SpanSegment("a", 0, 10)], rows.AsSpan(0, 10 * width), output.AsSpan(0, 10 * width));
        var first = new float[90 * width];
        span.Forward([new SpanSegment("a", 10, 90)], rows.AsSpan(10 * width), first);
        Assert.Equal(0, span.FreeKvTokens);
        // Back to 10 positions: the second block returns to the budget and its pages to the system.
        span.Truncate("a", 10);
        Assert.Equal(LayerSpan.KvBlockTokens, span.FreeKvTokens);
        // The kept positions still hold their KV: the same step again gives the same rows, bit for bit.
        var again = new float[90 * width];
        span.Forward([new SpanSegment("a", 10, 90)], rows.AsSpan(10 * width), again);
        Assert.Equal(first, again);
    }

    public static TheoryData<string> ResidencyFamilies() => new("llama", "qwen3moe");

    /// <summary>Dense and expert layers alike: a span binds its own layers' tensors (all experts of them) and no other.</summary>
    [Theory]
    [MemberData(nameof(ResidencyFamilies))]
    public void ASpanBindsOnlyItsOwnLayersAndOnlyThoseBecomeResident(string architecture)
    {
        var spec = OracleTests.Spec(architecture) with { LayerCount = 8, Seed = 11 };
        if (architecture == "qwen3moe")
            spec = spec with { ExpertCount = 8, ExpertUsedCount = 2, ExpertFeedForwardLength = 256, HeadCount = 8, HeadDim = 64 };
        var path = TestModels.Get(spec, GgmlType.F16);
        using var model = GgufModel.Open(path);
        using var span = new LayerSpan(model, 2, 4, new SpanOptions { Threads = 2 });
        Assert.All(model.BoundTensors, name => Assert.StartsWith(name.StartsWith("blk.3.", StringComparison.Ordinal) ? "blk.3." : "blk.2.", name));

        span.OpenSession("m", 32);
        // 32 rows, so the router sends some row to every expert and each expert's pages are read at least once.
        var input = new float[32 * span.Width];
        for (var i = 0; i < input.Length; i++) input[i] = MathF.Sin(i) * 0.5f;
        span.Forward([new SpanSegment("m", 0, 32)], input, new float[input.Length]);

        long layerBytes = 0, spanBytes = 0;
        foreach (var t in model.Info.Tensors)
        {
            if (!t.Name.StartsWith("blk.", StringComparison.Ordinal)) continue;
            layerBytes += t.Bytes;
            if (t.Name.StartsWith("blk.2.", StringComparison.Ordinal) || t.Name.StartsWith("blk.3.", StringComparison.Ordinal)) spanBytes += t.Bytes;
        }
        var resident = MappedResidentBytes(model.MappedAddress);
        if (architecture == "qwen3moe")
            Assert.Contains(model.BoundTensors, n => n == "blk.2.ffn_gate_exps.weight");
        output.WriteLine($"{architecture} span [2,4) of 8 layers: resident {resident} bytes of the mapping; its layers hold {spanBytes}, all layers {layerBytes}, file {model.Info.FileBytes}");
        // 2 of 8 layers: resident ≈ their weights; page fault-around may add a little at tensor edges.
        Assert.InRange(resident, spanBytes * 9 / 10, spanBytes + layerBytes / 16);
    }

    /// <summary>Rss of the mapping that starts at <paramref name="address"/>, from /proc/self/smaps.</summary>
    private static long MappedResidentBytes(IntPtr address)
    {
        var start = ((long)address).ToString("x", CultureInfo.InvariantCulture);
        var inMapping = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            if (line.Length > 0 && char.IsAsciiHexDigit(line[0]) && line.Contains('-'))
            {
                inMapping = line.StartsWith(start + "-", StringComparison.Ordinal);
                continue;
            }
            if (inMapping && line.StartsWith("Rss:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }
        throw new InvalidOperationException($"no mapping starts at 0x{start}");
    }
}
