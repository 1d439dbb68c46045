using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Potluck.Protocol.V1;

namespace Potluck.Protocol;

/// <summary>
/// The caller's end of a session's route (what the gateway holds): one Hop stream to the first stage,
/// steps written in order, each answered by the final stage's rows. One step in flight at a time.
/// </summary>
public sealed class SessionHopClient : IAsyncDisposable
{
    private readonly AsyncDuplexStreamingCall<HopRequest, HopResponse> _call;
    private readonly HopRequest _request = new() { Step = new Step() };
    private byte[] _payload = [];
    private ulong _nextStepId = 1;

    private SessionHopClient(AsyncDuplexStreamingCall<HopRequest, HopResponse> call, string sessionId, int width, HiddenType wireType, SessionOpened opened)
    {
        _call = call;
        SessionId = sessionId;
        Width = width;
        WireType = wireType;
        Opened = opened;
    }

    /// <summary>Positions the first stage held after opening (a resumed session may hold some already).</summary>
    public int FirstStageLength => Opened.Stages.Count > 0 ? Opened.Stages[0].SessionLength : 0;

    public string SessionId { get; }
    public int Width { get; }
    public HiddenType WireType { get; }
    public SessionOpened Opened { get; }
    public ulong LastStepId => _nextStepId - 1;

    /// <summary>Opens the session on every stage of the route (first stage at <paramref name="channel"/>).</summary>
    public static async Task<SessionHopClient> OpenAsync(CallInvoker invoker, OpenSession open, int width, TimeSpan timeout, CancellationToken ct = default)
    {
        var call = new Stage.StageClient(invoker).Hop(cancellationToken: ct);
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
            limit.CancelAfter(timeout);
            await call.RequestStream.WriteAsync(new HopRequest { Open = open }, limit.Token);
            if (!await call.ResponseStream.MoveNext(limit.Token))
                throw new RpcException(new Status(StatusCode.Unavailable, "the first stage ended the stream without answering open"));
            var answer = call.ResponseStream.Current;
            if (answer.KindCase != HopResponse.KindOneofCase.Opened)
                throw new RpcException(new Status(StatusCode.Internal, $"open answered with {answer.KindCase}"));
            // A resumed stream continues the session's step ids.
            return new SessionHopClient(call, open.SessionId, width, open.WireType, answer.Opened) { _nextStepId = open.LastStepId + 1 };
        }
        catch
        {
            call.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Fills this client's one reused step frame: encodes the rows into its payload buffer (grown, never shrunk)
    /// and sets every field. The frame is serialized by the next write, after which it may be filled again, so a
    /// step allocates nothing once the buffer has grown.
    /// </summary>
    public HopRequest PrepareStep(ReadOnlySpan<float> hidden, int rowCount, int startPosition, ulong stepId, int? truncateTo, bool lastRowOnly,
        bool rebuild = false)
    {
        var bytes = rowCount * Width * HiddenStateCodec.BytesPerElement(WireType);
        if (_payload.Length < bytes) _payload = new byte[Math.Max(bytes, _payload.Length * 2)];
        HiddenStateCodec.Encode(hidden[..(rowCount * Width)], WireType, _payload);
        var step = _request.Step;
        step.SessionId = SessionId;
        step.StepId = stepId;
        if (truncateTo is { } t) step.TruncateTo = t;
        else step.ClearTruncateTo();
        step.StartPosition = startPosition;
        step.RowCount = rowCount;
        step.Width = Width;
        step.Dtype = WireType;
        step.Hidden = UnsafeByteOperations.UnsafeWrap(_payload.AsMemory(0, bytes));
        step.LastRowOnly = lastRowOnly;
        step.Rebuild = rebuild;
        // Stages join the caller's trace; only when it is recorded, so untraced steps allocate nothing.
        step.Traceparent = !rebuild && Activity.Current is { Recorded: true } current ? current.Id ?? "" : "";
        return _request;
    }

    /// <summary>
    /// Sends <paramref name="rowCount"/> rows starting at <paramref name="startPosition"/> and waits for the
    /// final stage's rows, which are decoded into <paramref name="output"/> (F32). Returns the result.
    /// </summary>
    public async Task<StepResult> StepAsync(ReadOnlyMemory<float> hidden, int rowCount, int startPosition, bool lastRowOnly,
        Memory<float> output, TimeSpan timeout, int? truncateTo = null, CancellationToken ct = default)
    {
        var request = PrepareStep(hidden.Span, rowCount, startPosition, _nextStepId, truncateTo, lastRowOnly);
        var result = await SendAsync(request, timeout, ct);
        _nextStepId++;
        if (!HiddenStateCodec.TryDecode(result.Hidden.Span, result.Dtype, output.Span[..(result.RowCount * result.Width)], out _))
            throw new RpcException(new Status(StatusCode.Internal, $"result of step {result.StepId} has a malformed payload"));
        return result;
    }

    /// <summary>
    /// Sends rows that only rebuild a replacement first stage's KV (failover): step id 0, no answer, and stages that
    /// survived with these positions do not receive them. A failure shows on the next step.
    /// </summary>
    public Task RebuildAsync(ReadOnlyMemory<float> hidden, int rowCount, int startPosition, TimeSpan timeout, CancellationToken ct = default) =>
        WriteAsync(PrepareStep(hidden.Span, rowCount, startPosition, 0, null, lastRowOnly: true, rebuild: true), timeout, ct);

    /// <summary>Writes a frame that gets no answer (rebuild steps); a failure shows on the next step.</summary>
    public async Task WriteAsync(HopRequest request, TimeSpan timeout, CancellationToken ct = default)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        await _call.RequestStream.WriteAsync(request, limit.Token);
    }

    /// <summary>Writes any frame (tests, replays) and waits for the next result on the stream.</summary>
    public async Task<StepResult> SendAsync(HopRequest request, TimeSpan timeout, CancellationToken ct = default)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        await _call.RequestStream.WriteAsync(request, limit.Token);
        while (await _call.ResponseStream.MoveNext(limit.Token))
        {
            var response = _call.ResponseStream.Current;
            if (response.KindCase == HopResponse.KindOneofCase.Result) return response.Result;
        }
        throw new RpcException(new Status(StatusCode.Unavailable, "the route ended the stream"));
    }

    /// <summary>Closes the session on every stage and waits for the confirmation.</summary>
    public async Task CloseAsync(TimeSpan timeout)
    {
        using var limit = new CancellationTokenSource(timeout);
        await _call.RequestStream.WriteAsync(new HopRequest { Close = new CloseSession { SessionId = SessionId } }, limit.Token);
        while (await _call.ResponseStream.MoveNext(limit.Token))
            if (_call.ResponseStream.Current.KindCase == HopResponse.KindOneofCase.Closed) break;
        await _call.RequestStream.CompleteAsync();
    }

    public ValueTask DisposeAsync()
    {
        _call.Dispose();
        return ValueTask.CompletedTask;
    }
}
