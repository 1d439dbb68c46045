using Potluck.Gateway.Head;
using Potluck.Inference;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;

namespace Potluck.Gateway.Tests;

/// <summary>
/// The batched head against the one-row head (which the oracle tests hold to llama.cpp): eight sessions' real final
/// hidden rows in one graph give each session its own logits within the oracle tolerance and the same greedy token;
/// a NaN row fails its own session and no other.
/// </summary>
public sealed class HeadBatcherTests
{
    private const float Tolerance = 1e-3f;

    [Fact]
    public async Task Eight_rows_in_one_graph_give_each_session_its_own_logits_and_greedy_token()
    {
        using var model = GgufModel.Open(TestModels.Small(GgmlType.Q8_0));
        using var head = new ModelHead(model, threads: 1);
        using var batcher = new HeadBatcher(head);
        var rows = FinalRows(model, head, 8);
        var requests = Requests(head, rows);
        var before = batcher.Counts;
        await batcher.ComputeAllAsync(requests).WaitAsync(TimeSpan.FromSeconds(60));
        var after = batcher.Counts;
        Assert.Equal((1L, 8L), (after.Batches - before.Batches, after.Rows - before.Rows));

        for (var i = 0; i < rows.Count; i++)
        {
            var alone = new float[head.VocabSize];
            head.Logits(rows[i], 1, alone);
            var worst = 0f;
            for (var v = 0; v < alone.Length; v++) worst = Math.Max(worst, Math.Abs(alone[v] - requests[i].Logits[v]));
            Assert.True(worst <= Tolerance, $"session {i}: logits differ by {worst} from the one-row head");
            Assert.Equal(ArgMax(alone), ArgMax(requests[i].Logits));
        }
        // The sessions' rows differ, so each got its own logits, not a neighbour's.
        Assert.False(requests[0].Logits.AsSpan().SequenceEqual(requests[1].Logits));
    }

    [Fact]
    public async Task A_nan_row_fails_its_own_session_only()
    {
        using var model = GgufModel.Open(TestModels.Small(GgmlType.Q8_0));
        using var head = new ModelHead(model, threads: 1);
        using var batcher = new HeadBatcher(head);
        var rows = FinalRows(model, head, 3);
        var requests = Requests(head, rows);
        requests[1].Row[5] = float.NaN;
        var tasks = requests.Select(r => batcher.ComputeAsync(r).AsTask()).ToList();
        await Assert.ThrowsAsync<NonFiniteHiddenStateException>(() => tasks[1].WaitAsync(TimeSpan.FromSeconds(60)));
        await tasks[0].WaitAsync(TimeSpan.FromSeconds(60));
        await tasks[2].WaitAsync(TimeSpan.FromSeconds(60));
        var alone = new float[head.VocabSize];
        head.Logits(rows[2], 1, alone);
        Assert.Equal(ArgMax(alone), ArgMax(requests[2].Logits));
    }

    private static List<LogitsRequest> Requests(ModelHead head, List<float[]> rows) => rows.Select(row =>
    {
        var request = new LogitsRequest(head.Width, head.VocabSize);
        row.CopyTo(request.Row, 0);
        return request;
    }).ToList();

    /// <summary>Last-position final hidden states of <paramref name="count"/> different prompts, through every layer.</summary>
    private static List<float[]> FinalRows(GgufModel model, ModelHead head, int count)
    {
        using var span = new LayerSpan(model, 0, model.Info.LayerCount, new SpanOptions { Threads = 1 });
        var rows = new List<float[]>();
        for (var s = 0; s < count; s++)
        {
            int[] prompt = [1, 10 + s, 40 + 3 * s, 7, 90 - s];
            var hidden = new float[prompt.Length * head.Width];
            head.Embed(prompt, hidden);
            var id = $"s{s}";
            span.OpenSession(id, 16);
            var last = new float[head.Width];
            span.Forward([new SpanSegment(id, 0, prompt.Length, LastRowOnly: true)], hidden, last);
            rows.Add(last);
        }
        return rows;
    }

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        var best = 0;
        for (var i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }
}
