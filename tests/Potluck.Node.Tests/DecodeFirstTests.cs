using Microsoft.Extensions.Logging.Abstractions;
using Potluck.Inference.Engine;
using Potluck.Node.Compute;
using Potluck.Node.Telemetry;

namespace Potluck.Node.Tests;

/// <summary>
/// The compute loop schedules decode first: while one forward runs, two 300-row prompt chunks and two streams' next
/// tokens queue up (in that order); the next forward takes both tokens and the first chunk (302 of 512 rows), the
/// second chunk the one after. Arrival order alone would have run the first chunk by itself and made both tokens
/// wait for the second.
/// </summary>
public sealed class DecodeFirstTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Waiting_tokens_join_the_next_forward_before_prompt_chunks_that_would_not_fit()
    {
        var compute = new GatedEchoCompute(new EchoCompute(4, 0, 1, 1));
        using var host = new SpanHost(compute, "sched", NullLogger<SpanHost>.Instance, new NodeTelemetry(), maxRowsPerStep: 512, maxBatchRows: 512);
        var running = host.Open("running", 1024);
        var chunkB = host.Open("chunk-b", 1024);
        var chunkC = host.Open("chunk-c", 1024);
        var tokenD = host.Open("token-d", 1024);
        var tokenE = host.Open("token-e", 1024);

        var first = Step(running, 100);
        Assert.True(compute.Entered.Wait(Timeout), "the first forward did not start");
        var b = Step(chunkB, 300);
        var c = Step(chunkC, 300);
        var d = Step(tokenD, 1);
        var e = Step(tokenE, 1);
        // Each step is queued once the loop sees it; give the queue a moment, then let the first forward finish.
        await Task.Delay(200);
        compute.Release.Set();
        await Task.WhenAll(first, b, c, d, e).WaitAsync(Timeout);

        Assert.Equal(
        [
            ["running"],
            ["token-d", "token-e", "chunk-b"],
            ["chunk-c"],
        ], compute.Batches);
    }

    private static Task<int> Step(StageSession session, int rows)
    {
        session.RentInput(rows).Fill(0.5f);
        return session.StepAsync(-1, 0, rows, lastRowOnly: false).AsTask();
    }

    /// <summary>Echo compute that records each forward's sessions and holds the first forward until released.</summary>
    private sealed class GatedEchoCompute(EchoCompute inner) : IStageCompute
    {
        public ManualResetEventSlim Entered { get; } = new();
        public ManualResetEventSlim Release { get; } = new();
        public List<string[]> Batches { get; } = [];

        public string ModelId => inner.ModelId;
        public int LayerStart => inner.LayerStart;
        public int LayerEnd => inner.LayerEnd;
        public int LayerCount => inner.LayerCount;
        public int Width => inner.Width;
        public bool IsFinal => inner.IsFinal;
        public int ContextLength => inner.ContextLength;
        public long KvBudgetTokens => inner.KvBudgetTokens;
        public long FreeKvTokens => inner.FreeKvTokens;
        public long KvBytesPerToken => inner.KvBytesPerToken;
        public int SessionCount => inner.SessionCount;
        public void OpenSession(string sessionId, int maxTokens) => inner.OpenSession(sessionId, maxTokens);
        public void Reserve(string sessionId, int length) => inner.Reserve(sessionId, length);
        public bool CloseSession(string sessionId) => inner.CloseSession(sessionId);
        public int SessionLength(string sessionId) => inner.SessionLength(sessionId);
        public void Truncate(string sessionId, int length) => inner.Truncate(sessionId, length);

        public void Forward(ReadOnlySpan<SpanSegment> segments, ReadOnlySpan<float> hidden, Span<float> output)
        {
            var names = new string[segments.Length];
            for (var i = 0; i < segments.Length; i++) names[i] = segments[i].SessionId;
            Batches.Add(names);
            if (Batches.Count == 1)
            {
                Entered.Set();
                Release.Wait(Timeout);
            }
            inner.Forward(segments, hidden, output);
        }

        public void Dispose() => inner.Dispose();
    }
}
