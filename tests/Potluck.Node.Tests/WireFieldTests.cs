using System.Collections.Concurrent;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.DependencyInjection;
using Potluck.Inference.Gguf;
using Potluck.Protocol;
using Potluck.Protocol.V1;

namespace Potluck.Node.Tests;

/// <summary>
/// Every frame a stage receives, as it arrived (cloned before the stage touches it), by session id. Installed as a
/// real gRPC server interceptor on a stage, so it sees exactly what came over the wire.
/// </summary>
public sealed class FrameRecorder : Interceptor
{
    private readonly ConcurrentDictionary<string, ConcurrentQueue<HopRequest>> _frames = new(StringComparer.Ordinal);

    public IReadOnlyList<HopRequest> Frames(string sessionId) => _frames.TryGetValue(sessionId, out var q) ? q.ToArray() : [];

    public override Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
        IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation) =>
        continuation(new RecordingReader<TRequest>(requestStream, this), responseStream, context);

    private void Record(HopRequest request)
    {
        var sessionId = request.KindCase switch
        {
            HopRequest.KindOneofCase.Open => request.Open.SessionId,
            HopRequest.KindOneofCase.Step => request.Step.SessionId,
            HopRequest.KindOneofCase.Close => request.Close.SessionId,
            _ => "",
        };
        _frames.GetOrAdd(sessionId, _ => new ConcurrentQueue<HopRequest>()).Enqueue(request.Clone());
    }

    private sealed class RecordingReader<T>(IAsyncStreamReader<T> inner, FrameRecorder recorder) : IAsyncStreamReader<T>
    {
        public T Current => inner.Current;

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (!await inner.MoveNext(cancellationToken)) return false;
            if (inner.Current is HopRequest request) recorder.Record(request);
            return true;
        }
    }
}

/// <summary>
/// A field the caller sets reaches the last stage of a chain: for plain steps, for a resume and for rebuild steps.
/// Real in-process stages over gRPC loopback (F32 wire), a frame recorder on the first and on the last stage.
///
/// Where a new wire field goes: declare it in protos/potluck/v1/stage.proto and set it in
/// <see cref="HopFrames.Open"/> (an open field) or <see cref="HopFrames.FillStep"/> (a step field). Stages pass on the
/// frame they received (<see cref="HopFrames.ForNextStage"/>, <see cref="HopFrames.Relay"/>), replacing only what a
/// stage owns, so nothing else changes; these tests compare every field except those, so they cover the new one too.
/// </summary>
[ProcessTest]
public sealed class WireFieldTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private const int MaxTokens = 64;
    private static readonly int[] StepRows = [5, 1, 1];

    [Fact]
    public async Task Every_field_the_caller_sets_reaches_the_last_stage_on_steps_a_resume_and_rebuild_steps()
    {
        var first = new FrameRecorder();
        var last = new FrameRecorder();
        await using var pool = await InProcessPool.StartAsync(TestModels.Small(GgmlType.Q8_0), [(0, 1), (1, 2), (2, 4)], prefix: "wf",
            configureHost: i => i switch
            {
                0 => b => Record(b, first),
                2 => b => Record(b, last),
                _ => null,
            });
        var width = pool.Host(0).Width;
        var inputs = Inputs(width);
        using var channel = Channels.For(pool.Options[0]);

        // Plain steps, each with fields only the final stage acts on: return_rows, last_row_only, truncate_to.
        var plain = await OpenAsync(pool, channel, "plain", resume: null);
        var answer = new float[StepRows[0] * width];
        var rows = await plain.StepAsync(inputs[0], StepRows[0], 0, lastRowOnly: false, answer, Timeout, returnRows: new[] { 1, 3 });
        Assert.Equal(2, rows.RowCount); // the final stage saw return_rows
        var all = await plain.StepAsync(inputs[1], 1, 5, lastRowOnly: false, answer, Timeout);
        Assert.Equal(1, all.RowCount);
        var rewound = await plain.StepAsync(ReadOnlyMemory<float>.Empty, 0, 5, lastRowOnly: true, answer, Timeout, truncateTo: 5);
        Assert.Equal(0, rewound.RowCount);
        Assert.Equal(5, rewound.SessionLength); // the final stage saw truncate_to
        await plain.CloseAsync(Timeout);
        await plain.DisposeAsync();
        AssertSameFrames(first.Frames("plain"), last.Frames("plain"), steps: 3);
        Assert.Equal(new[] { 1, 3 }, last.Frames("plain")[1].Step.ReturnRows);
        Assert.Equal(5, last.Frames("plain")[3].Step.TruncateTo);

        // The uninterrupted run the resumed one must match.
        var reference = await OpenAsync(pool, channel, "reference", resume: null);
        var expected = new float[width];
        var position = 0;
        for (var i = 0; i < StepRows.Length; i++)
        {
            await reference.StepAsync(inputs[i], StepRows[i], position, lastRowOnly: true, expected, Timeout);
            position += StepRows[i];
        }
        await reference.CloseAsync(Timeout);
        await reference.DisposeAsync();

        // A resume on stages that never held the session: every stage opens it empty (the resume fields reached the last
        // stage), so the caller's rebuild steps travel the whole chain, and the next step continues the session exactly.
        var committed = StepRows[0] + StepRows[1];
        var resumed = await OpenAsync(pool, channel, "resumed", resume: new ResumePoint(committed, 2));
        Assert.Equal(new[] { 0, 0, 0 }, resumed.Opened.Stages.Select(s => s.SessionLength));
        await resumed.RebuildAsync(inputs[0], StepRows[0], 0, Timeout);
        await resumed.RebuildAsync(inputs[1], StepRows[1], StepRows[0], Timeout);
        var actual = new float[width];
        var continued = await resumed.StepAsync(inputs[2], StepRows[2], committed, lastRowOnly: true, actual, Timeout);
        Assert.Equal(3ul, continued.StepId); // step ids continue after last_step_id
        Assert.Equal(expected, actual);
        Assert.Equal(position, pool.Host(2).SessionLength("resumed"));
        await resumed.CloseAsync(Timeout);
        await resumed.DisposeAsync();

        var lastFrames = last.Frames("resumed");
        AssertSameFrames(first.Frames("resumed"), lastFrames, steps: 3);
        Assert.True(lastFrames[0].Open.Resume);
        Assert.Equal(committed, lastFrames[0].Open.ResumeLength);
        Assert.Equal(2ul, lastFrames[0].Open.LastStepId);
        Assert.True(lastFrames[1].Step.Rebuild);
        Assert.True(lastFrames[2].Step.Rebuild);
        Assert.False(lastFrames[3].Step.Rebuild);
    }

    // The interceptor activator takes a registered instance from DI.
    private static void Record(Microsoft.AspNetCore.Builder.WebApplicationBuilder builder, FrameRecorder recorder)
    {
        builder.Services.AddSingleton(recorder);
        builder.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<FrameRecorder>());
    }

    /// <summary>
    /// The open and the first <paramref name="steps"/> steps arrived at the last stage as the first stage received
    /// them, but for what each stage owns: the span and route tail of an open, a step's payload, and trace context.
    /// </summary>
    private static void AssertSameFrames(IReadOnlyList<HopRequest> sent, IReadOnlyList<HopRequest> arrived, int steps)
    {
        Assert.True(arrived.Count >= 1 + steps, $"the last stage received {arrived.Count} frames");
        Assert.Equal(HopRequest.KindOneofCase.Open, sent[0].KindCase);
        Assert.Equal(WithoutStageFields(sent[0].Open), WithoutStageFields(arrived[0].Open));
        for (var i = 1; i <= steps; i++)
            Assert.Equal(WithoutStageFields(sent[i].Step), WithoutStageFields(arrived[i].Step));
    }

    private static OpenSession WithoutStageFields(OpenSession open)
    {
        var copy = open.Clone();
        copy.LayerStart = 0;
        copy.LayerEnd = 0;
        copy.Next.Clear();
        copy.Traceparent = "";
        copy.Tracestate = "";
        return copy;
    }

    private static Step WithoutStageFields(Step step)
    {
        var copy = step.Clone();
        copy.Hidden = Google.Protobuf.ByteString.Empty;
        copy.Traceparent = "";
        return copy;
    }

    private static Task<SessionHopClient> OpenAsync(InProcessPool pool, Grpc.Net.Client.GrpcChannel channel, string sessionId, ResumePoint? resume)
    {
        var route = pool.Options.Select(o => new RouteHop { NodeId = o.ResolvedNodeId, Endpoint = o.GrpcEndpoint, LayerStart = o.LayerStart, LayerEnd = o.LayerEnd }).ToList();
        var open = HopFrames.Open(sessionId, pool.Host(0).ModelId, MaxTokens, HiddenType.F32, route,
            TestTickets.For(sessionId, route, MaxTokens, resume is not null), resume);
        return SessionHopClient.OpenAsync(channel.CreateCallInvoker(), open, pool.Host(0).Width, Timeout);
    }

    private static float[][] Inputs(int width)
    {
        var rng = new Random(11);
        return StepRows.Select(rows => Enumerable.Range(0, rows * width).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray()).ToArray();
    }
}

/// <summary>
/// A failure deep in a chain reaches the caller with its own reason and failing stage, whatever stage the caller
/// talks to; the first stage only prepends the path. Real in-process stages over gRPC loopback.
/// </summary>
[ProcessTest]
public sealed class ChainFailureTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Downstream_failures_keep_their_reason_and_failing_stage()
    {
        // 0: [0,2)  1: [2,4)  2: [2,3) (only there to be named wrongly)
        await using var pool = await InProcessPool.StartAsync(TestModels.Small(GgmlType.Q8_0), [(0, 2), (2, 4), (2, 3)], kvBudgetTokens: 100, prefix: "cf");
        var modelId = pool.Host(0).ModelId;
        using var channel = Channels.For(pool.Options[0]);
        RouteHop Hop(int i, int? end = null) => new()
        {
            NodeId = pool.Options[i].ResolvedNodeId, Endpoint = pool.Options[i].GrpcEndpoint, LayerStart = pool.Options[i].LayerStart,
            LayerEnd = end ?? pool.Options[i].LayerEnd,
        };
        var first = Hop(0);
        async Task<HopFailure> OpenFailsAsync(string sessionId, int maxTokens, params RouteHop[] tail)
        {
            RouteHop[] route = [first, .. tail];
            var open = HopFrames.Open(sessionId, modelId, maxTokens, HiddenType.F16, route, TestTickets.For(sessionId, route, maxTokens, resume: false));
            var error = await Assert.ThrowsAsync<RpcException>(() => SessionHopClient.OpenAsync(channel.CreateCallInvoker(), open, pool.Host(0).Width, Timeout));
            return HopFailure.Read(error);
        }
        var path = $"node {pool.Options[0].ResolvedNodeId} layers [0, 2) → node ";

        // The last stage holds [2,3) but the route asks it for [2,4): its SPAN_MISMATCH, not the first stage's.
        var span = await OpenFailsAsync("span", 32, Hop(2, end: 4));
        Assert.Equal((HopFailureReason.SpanMismatch, StatusCode.FailedPrecondition), (span.Reason, span.Code));
        Assert.Equal(new HopStage(pool.Options[2].ResolvedNodeId, 2, 3), span.Stage);
        Assert.StartsWith(path, span.Message);

        // Nothing listens at the next stage's endpoint: STAGE_UNREACHABLE, attributed to that stage.
        var dead = new RouteHop { NodeId = "gone", Endpoint = $"https://127.0.0.1:{Ports.Free()}", LayerStart = 2, LayerEnd = 4 };
        var unreachable = await OpenFailsAsync("dead", 32, dead);
        Assert.Equal((HopFailureReason.StageUnreachable, StatusCode.Unavailable), (unreachable.Reason, unreachable.Code));
        Assert.Equal(new HopStage("gone", 2, 4), unreachable.Stage);

        // The last stage has no KV room left (another session holds its first 64-token block of 100): KV_FULL at that stage.
        using var lastChannel = Channels.For(pool.Options[1]);
        var hog = await SessionHopClient.OpenAsync(lastChannel.CreateCallInvoker(),
            HopFrames.Open("hog", modelId, 100, HiddenType.F16, [Hop(1)], TestTickets.For("hog", [Hop(1)], 100, resume: false)), pool.Host(1).Width, Timeout);
        var full = await OpenFailsAsync("full", 64, Hop(1));
        Assert.Equal((HopFailureReason.KvFull, StatusCode.ResourceExhausted), (full.Reason, full.Code));
        Assert.Equal(new HopStage(pool.Options[1].ResolvedNodeId, 2, 4), full.Stage);
        await hog.CloseAsync(Timeout);
        await hog.DisposeAsync();

        // The same code from a draining last stage is DRAINING: the gateway avoids that node instead of checking KV.
        pool.Host(1).BeginDrain();
        var draining = await OpenFailsAsync("draining", 32, Hop(1));
        Assert.Equal((HopFailureReason.Draining, StatusCode.ResourceExhausted), (draining.Reason, draining.Code));
        Assert.Equal(new HopStage(pool.Options[1].ResolvedNodeId, 2, 4), draining.Stage);
        Assert.StartsWith(path, draining.Message);
    }
}
