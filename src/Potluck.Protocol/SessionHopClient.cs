using Grpc.Core;
using Potluck.Protocol.V1;

namespace Potluck.Protocol;

/// <summary>
/// The caller's end of one session's Hop stream, the only hop client: the gateway holds one to a route's first stage,
/// each non-final stage holds one to its next stage, and the tests use it. It counts the session's step ids, builds
/// every frame through <see cref="HopFrames"/> into one reused frame (a step allocates nothing once its payload buffer
/// has grown) and checks the answers. One step in flight at a time, except for a relaying stage, which writes steps and
/// reads answers on different tasks (<see cref="ForwardAsync"/>, <see cref="Responses"/>).
/// </summary>
public sealed class SessionHopClient : IAsyncDisposable
{
    private readonly AsyncDuplexStreamingCall<HopRequest, HopResponse> _call;
    private readonly HopRequest _request = new();
    private readonly Step _step = new();
    private byte[] _payload = [];
    private ulong _nextStepId;

    private SessionHopClient(AsyncDuplexStreamingCall<HopRequest, HopResponse> call, OpenSession open, int width, SessionOpened opened)
    {
        _call = call;
        SessionId = open.SessionId;
        Width = width;
        WireType = open.WireType;
        Opened = opened;
        // A resumed stream continues the session's step ids.
        _nextStepId = open.LastStepId + 1;
    }

    /// <summary>Positions the first stage held after opening (a resumed session may hold some already).</summary>
    public int FirstStageLength => Opened.Stages.Count > 0 ? Opened.Stages[0].SessionLength : 0;

    public string SessionId { get; }
    public int Width { get; }
    public HiddenType WireType { get; }
    public SessionOpened Opened { get; }

    /// <summary>The last step the route answered; a resume continues after it.</summary>
    public ulong LastStepId => _nextStepId - 1;

    /// <summary>
    /// Opens the session on every stage of the route (first stage at <paramref name="invoker"/>) and waits up to
    /// <paramref name="timeout"/> for the answer (an <see cref="OperationCanceledException"/> past it). The call lives
    /// until disposed or until <paramref name="callLifetime"/> (default <paramref name="ct"/>) is cancelled.
    /// </summary>
    public static async Task<SessionHopClient> OpenAsync(CallInvoker invoker, OpenSession open, int width, TimeSpan timeout, CancellationToken ct = default,
        CancellationToken? callLifetime = null)
    {
        var call = new Stage.StageClient(invoker).Hop(cancellationToken: callLifetime ?? ct);
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
            limit.CancelAfter(timeout);
            await call.RequestStream.WriteAsync(new HopRequest { Open = open }, limit.Token);
            if (!await call.ResponseStream.MoveNext(limit.Token))
                throw HopFailure.Exception(HopFailureReason.StageUnreachable, "ended the stream without answering open");
            var answer = call.ResponseStream.Current;
            if (answer.KindCase != HopResponse.KindOneofCase.Opened)
                throw HopFailure.Exception(HopFailureReason.BadResult, $"answered open with {answer.KindCase}");
            return new SessionHopClient(call, open, width, answer.Opened);
        }
        catch
        {
            call.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Fills the reused frame with the session's next step: encodes the rows into the payload buffer (grown, never
    /// shrunk). The frame is serialized by the next write, after which it may be filled again. The step id is
    /// counted when the answer arrives (<see cref="StepAsync"/>, <see cref="SendAsync"/>).
    /// </summary>
    public HopRequest PrepareStep(ReadOnlySpan<float> hidden, int rowCount, int startPosition, int? truncateTo, bool lastRowOnly,
        ReadOnlySpan<int> returnRows = default, bool rebuild = false)
    {
        var bytes = rowCount * Width * HiddenStateCodec.BytesPerElement(WireType);
        if (_payload.Length < bytes) _payload = new byte[Math.Max(bytes, _payload.Length * 2)];
        HiddenStateCodec.Encode(hidden[..(rowCount * Width)], WireType, _payload);
        HopFrames.FillStep(_step, SessionId, _nextStepId, startPosition, rowCount, Width, WireType, _payload.AsMemory(0, bytes), truncateTo,
            lastRowOnly, returnRows, rebuild);
        _request.Step = _step;
        return _request;
    }

    /// <summary>
    /// Sends <paramref name="rowCount"/> rows starting at <paramref name="startPosition"/> (after an optional rewind to
    /// <paramref name="truncateTo"/>) as the next step and waits for the final stage's rows, which are checked and
    /// decoded into <paramref name="output"/> (F32). Returns the result.
    /// </summary>
    public async Task<StepResult> StepAsync(ReadOnlyMemory<float> hidden, int rowCount, int startPosition, bool lastRowOnly,
        Memory<float> output, TimeSpan timeout, int? truncateTo = null, CancellationToken ct = default, ReadOnlyMemory<int> returnRows = default)
    {
        var stepId = _nextStepId;
        var result = await SendAsync(PrepareStep(hidden.Span, rowCount, startPosition, truncateTo, lastRowOnly, returnRows.Span), timeout, ct);
        if (result.StepId != stepId)
            throw HopFailure.Exception(HopFailureReason.BadResult, $"route answered step {result.StepId}, expected {stepId}");
        if (result.RowCount == 0) return result;
        if (result.Width != Width)
            throw HopFailure.Exception(HopFailureReason.BadResult, $"route answered rows of width {result.Width}, expected {Width}");
        var values = (long)result.RowCount * Width;
        if (values > output.Length)
            throw HopFailure.Exception(HopFailureReason.BadResult, $"route returned {result.RowCount} rows for step {result.StepId}, room for {output.Length / Width}");
        if (!HiddenStateCodec.TryDecode(result.Hidden.Span, result.Dtype, output.Span[..(int)values], out var finite) || !finite)
            throw HopFailure.Exception(HopFailureReason.BadResult, $"result of step {result.StepId} has a malformed or non-finite payload");
        return result;
    }

    /// <summary>
    /// Sends rows that only rebuild a replacement first stage's KV (failover): step id 0, no answer, and stages that
    /// survived with these positions do not receive them. A failure shows on the next step.
    /// </summary>
    public Task RebuildAsync(ReadOnlyMemory<float> hidden, int rowCount, int startPosition, TimeSpan timeout, CancellationToken ct = default) =>
        WriteAsync(PrepareStep(hidden.Span, rowCount, startPosition, null, lastRowOnly: true, rebuild: true), timeout, ct);

    /// <summary>
    /// A stage rebuilding its replacement next stage: one rebuild step of rows it already holds encoded
    /// (<paramref name="payload"/>, kept unchanged until the write completes).
    /// </summary>
    public Task RebuildAsync(ReadOnlyMemory<byte> payload, HiddenType dtype, int rowCount, int startPosition, CancellationToken ct)
    {
        HopFrames.FillStep(_step, SessionId, 0, startPosition, rowCount, Width, dtype, payload, null, lastRowOnly: true, default, rebuild: true);
        _request.Step = _step;
        return _call.RequestStream.WriteAsync(_request, ct);
    }

    /// <summary>
    /// A stage passing a step it received to its next stage: the received frame itself, with only its payload replaced
    /// (<see cref="HopFrames.Relay"/>), so every field the caller set travels on. The answer comes through <see cref="Responses"/>.
    /// </summary>
    public Task ForwardAsync(Step received, ReadOnlyMemory<byte> payload, int rowCount, HiddenType dtype, CancellationToken ct)
    {
        HopFrames.Relay(received, payload, rowCount, Width, dtype);
        _request.Step = received;
        return _call.RequestStream.WriteAsync(_request, ct);
    }

    /// <summary>The answers on the stream, read directly by a relaying stage's read loop (no per-answer task).</summary>
    public IAsyncStreamReader<HopResponse> Responses => _call.ResponseStream;

    /// <summary>Writes a frame that gets no answer (rebuild steps); a failure shows on the next step.</summary>
    public async Task WriteAsync(HopRequest request, TimeSpan timeout, CancellationToken ct = default)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        await WriteFrameAsync(request, limit.Token);
    }

    /// <summary>
    /// A write to a stream whose stage has gone: the client may throw other than RpcException (the call completed, its
    /// connection reset), which is a stage failure like any other, so failover sees one kind of error.
    /// </summary>
    private async Task WriteFrameAsync(HopRequest request, CancellationToken ct)
    {
        try
        {
            await _call.RequestStream.WriteAsync(request, ct);
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or ObjectDisposedException or HttpRequestException)
        {
            throw HopFailure.Exception(HopFailureReason.StageUnreachable, $"the route's stream is closed: {e.Message}");
        }
    }

    /// <summary>
    /// Writes a frame (a prepared step, or any frame in tests) and waits for the next result on the stream. A result
    /// for the next step id counts it.
    /// </summary>
    public async Task<StepResult> SendAsync(HopRequest request, TimeSpan timeout, CancellationToken ct = default)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        await WriteFrameAsync(request, limit.Token);
        while (await _call.ResponseStream.MoveNext(limit.Token))
        {
            var response = _call.ResponseStream.Current;
            if (response.KindCase != HopResponse.KindOneofCase.Result) continue;
            if (response.Result.StepId == _nextStepId) _nextStepId++;
            return response.Result;
        }
        throw HopFailure.Exception(HopFailureReason.StageUnreachable, "the route ended the stream");
    }

    /// <summary>Ends this side of the stream: the stages close the session once they have answered what they got.</summary>
    public Task CompleteAsync() => _call.RequestStream.CompleteAsync();

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
