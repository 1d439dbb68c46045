using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Potluck.Inference;
using Potluck.Node.Compute;
using Potluck.Node.Telemetry;
using Potluck.Protocol;
using Potluck.Protocol.Diagnostics;
using Potluck.Protocol.V1;

namespace Potluck.Node.Hops;

/// <summary>
/// One inbound Hop stream: validates every frame, runs steps on the span, pushes outputs to the next
/// stage (keeping them in the session's output log) and relays the final stage's rows back up. A close, or the
/// caller completing its side, frees the session here and downstream; a rejected frame or an engine error frees
/// it too. When the route breaks instead (the caller's stream or the next stage fails), the session is detached:
/// its KV and output log wait for the gateway to resume it on a repaired route (see OpenSession.resume).
/// </summary>
internal sealed class HopSession
{
    private static readonly TimeSpan TakeoverTimeout = TimeSpan.FromSeconds(5);

    private readonly SpanHost _host;
    private readonly MemberChannels _channels;
    private readonly NodeTelemetry _telemetry;
    private readonly ILogger _log;
    private readonly IServerStreamWriter<HopResponse> _responses;
    private readonly ServerCallContext _context;
    private readonly StageFailures _failures;
    private readonly HopFrameValidator _validator;
    private readonly SemaphoreSlim _writeGate = new(1, 1);
    private readonly ReplayCache _replay = new();

    private StageSession? _session;
    // Null on the final stage.
    private DownstreamLink? _downstream;
    private CancellationToken _attachment;
    // Close (free) rather than detach when the stream ends: set by rejected frames and engine errors.
    private bool _closeOnFinish;
    // Rebuild steps are accepted only until the first normal step after open.
    private ulong _openedAfterStepId;
    private HiddenType _wireType;
    private ActivityContext _sessionParent;
    private ulong _lastStepId;
    private volatile bool _finished;
    private byte[] _encodeBuffer = [];

    public HopSession(SpanHost host, MemberChannels channels, RouteTicketVerifier tickets, NodeTelemetry telemetry, ILogger log,
        IServerStreamWriter<HopResponse> responses, ServerCallContext context)
    {
        _host = host;
        _channels = channels;
        _telemetry = telemetry;
        _log = log;
        _responses = responses;
        _context = context;
        _failures = new StageFailures(host);
        _validator = new HopFrameValidator(host, _failures, tickets, CallerNodeId(context));
    }

    private string Where => _failures.Where;

    /// <summary>The node id of the caller's pool certificate (Kestrel validated it against the pool CA), if it sent one.</summary>
    private static string? CallerNodeId(ServerCallContext context)
    {
        var certificate = context.GetHttpContext()?.Connection.ClientCertificate;
        return certificate is null ? null : Potluck.Security.PoolIdentity.FromCertificate(certificate)?.NodeId;
    }

    public async Task RunAsync(IAsyncStreamReader<HopRequest> requests)
    {
        var callToken = _context.CancellationToken;
        if (!await requests.MoveNext(callToken)) return;
        var first = requests.Current;
        if (_validator.CheckFirst(first) is { } badFirst) throw Reject(badFirst);

        try
        {
            try
            {
                await OpenAsync(first.Open, callToken);
            }
            catch when (!first.Open.Resume)
            {
                // A fresh session that never opened along its route holds nothing worth resuming: free it here and
                // downstream rather than keep its KV reservation for the detach timeout.
                _closeOnFinish = true;
                throw;
            }
            var session = _session!;
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(callToken, session.Closed,
                _downstream?.Failed ?? CancellationToken.None, _attachment);
            try
            {
                while (await requests.MoveNext(linked.Token))
                {
                    var request = requests.Current;
                    switch (request.KindCase)
                    {
                        case HopRequest.KindOneofCase.Step:
                            await HandleStepAsync(request.Step, linked.Token);
                            break;
                        case HopRequest.KindOneofCase.Close:
                            if (request.Close.SessionId != session.Id)
                                throw Reject(_failures.Fail(HopFailureReason.InvalidFrame, $"close for session '{request.Close.SessionId}' on the stream of session '{session.Id}'"));
                            await FinishAsync(closeDownstreamGracefully: true, detach: false);
                            await WriteAsync(new HopResponse { Closed = new SessionClosed { SessionId = session.Id } }, callToken);
                            return;
                        case HopRequest.KindOneofCase.Open:
                            throw Reject(_failures.Fail(HopFailureReason.AlreadyOpen, $"session '{session.Id}' is already open on this stream"));
                        default:
                            throw Reject(_failures.Fail(HopFailureReason.InvalidFrame, "empty frame"));
                    }
                }
                // The caller completed its side: the session is over on this stage and downstream.
                await FinishAsync(closeDownstreamGracefully: true, detach: false);
            }
            catch (OperationCanceledException) when (!callToken.IsCancellationRequested)
            {
                if (_downstream?.Error is { } downstream) throw downstream;
                if (session.IsClosed)
                {
                    if (session.WasCancelled) throw _failures.Fail(HopFailureReason.SessionCancelled, $"session '{session.Id}' was cancelled");
                    return; // closed through the control plane: end the stream cleanly
                }
                if (_attachment.IsCancellationRequested)
                    throw _failures.Fail(HopFailureReason.TakenOver, $"session '{session.Id}' was taken over by a resuming stream");
                throw;
            }
        }
        catch (Exception e) when (e is EngineException or NodeDrainingException)
        {
            throw Reject(_failures.FromException(e));
        }
        catch (SessionClosedException e)
        {
            _closeOnFinish = true;
            throw _failures.FromException(e);
        }
        finally
        {
            // Anything else (the caller's stream broke, the next stage failed, a takeover) keeps the session for a resume;
            // a session that is over here (closed through the control plane, rejected) is ended downstream too.
            var detach = !_closeOnFinish && _session is { IsClosed: false };
            await FinishAsync(closeDownstreamGracefully: !detach, detach);
        }
    }

    private RpcException Reject(RpcException error)
    {
        _closeOnFinish = true;
        _telemetry.Rejected.Add(1);
        _log.LogDebug("Rejected frame on {Where}: {Code} {Detail}", Where, error.StatusCode, error.Status.Detail);
        return error;
    }

    private async Task OpenAsync(OpenSession open, CancellationToken ct)
    {
        // The ticket is checked here, before anything is reserved, taken over or dialled.
        if (_validator.CheckOpen(open, out var next) is { } bad) throw Reject(bad);

        _wireType = open.WireType;
        _sessionParent = NodeTelemetry.ParentFrom(open.Traceparent, open.Tracestate);
        using var activity = NodeTelemetry.Source.StartActivity("potluck.node.open", ActivityKind.Server, _sessionParent);
        activity?.SetTag("potluck.session", open.SessionId);
        activity?.SetTag("potluck.node", _host.NodeId);
        activity?.SetTag("potluck.layers", $"{_host.LayerStart}-{_host.LayerEnd}");

        StageSession session;
        int length;
        if (open.Resume)
        {
            activity?.SetTag("potluck.resume_length", open.ResumeLength);
            CancellationToken? heldAttachment = null;
            if (_host.TryGet(open.SessionId, out var held)) heldAttachment = await TakeOverAsync(held, ct);
            session = _host.Resume(open.SessionId, open.MaxTokens, open.ResumeLength, out length);
            if (ReferenceEquals(session, held) && heldAttachment is { } token) _attachment = token;
            else _attachment = session.TryAttachStream() ?? throw Reject(AlreadyAttached(open.SessionId));
            _lastStepId = open.LastStepId;
            _openedAfterStepId = open.LastStepId;
            _log.LogInformation("Resumed session {Session} on {Where}: holds {Length} of {ResumeLength} positions", open.SessionId, Where, length, open.ResumeLength);
        }
        else
        {
            session = _host.Open(open.SessionId, open.MaxTokens);
            _attachment = session.TryAttachStream() ?? throw Reject(AlreadyAttached(open.SessionId));
            length = _host.SessionLength(open.SessionId);
        }
        _session = session;

        var opened = new SessionOpened { SessionId = session.Id };
        opened.Stages.Add(new StageSlot
        {
            NodeId = _host.NodeId, LayerStart = _host.LayerStart, LayerEnd = _host.LayerEnd, FreeKvTokens = _host.FreeKvTokens, SessionLength = length,
        });
        if (!_host.IsFinal)
        {
            _downstream = new DownstreamLink(_channels, _failures, _host.Width, _telemetry, _log);
            var downstreamOpened = await _downstream.OpenAsync(open, next!, RelayUpAsync, ct);
            opened.Stages.AddRange(downstreamOpened.Stages);
            if (_downstream.OpenedLength < length) await _downstream.RebuildAsync(session.OutputLog!, session.Id, length, _wireType, ct);
        }
        await WriteAsync(new HopResponse { Opened = opened }, ct);
    }

    private RpcException AlreadyAttached(string sessionId) =>
        _failures.Fail(HopFailureReason.AlreadyAttached, $"session '{sessionId}' is already attached to another stream");

    /// <summary>Attaches a session another stream may still hold, asking that stream to let go (bounded wait).</summary>
    private async Task<CancellationToken> TakeOverAsync(StageSession held, CancellationToken ct)
    {
        var deadline = Stopwatch.GetTimestamp() + (long)(TakeoverTimeout.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            if (held.TryAttachStream() is { } token) return token;
            if (held.IsClosed) return CancellationToken.None; // Resume opens it afresh
            held.RequestTakeover();
            if (Stopwatch.GetTimestamp() > deadline) throw Reject(AlreadyAttached(held.Id));
            await Task.Delay(10, ct);
        }
    }

    /// <summary>An answer of the final stage, relayed up this stream (the downstream link's read loop).</summary>
    private async ValueTask RelayUpAsync(HopResponse response)
    {
        StepTimeline.Mark(StepEvent.StageRelayReceived, response.Result.StepId);
        _replay.Remember(response.Result);
        _telemetry.BytesOut.Add(response.Result.Hidden.Length);
        await WriteAsync(response, _context.CancellationToken);
        StepTimeline.Mark(StepEvent.StageRelayWritten, response.Result.StepId);
    }

    private async ValueTask HandleStepAsync(Step step, CancellationToken ct)
    {
        var started = Stopwatch.GetTimestamp();
        StepTimeline.Mark(StepEvent.StageReceived, step.StepId);
        var session = _session!;
        if (_validator.CheckOrder(step, session.Id, _lastStepId, _openedAfterStepId, out var order) is { } outOfOrder) throw Reject(outOfOrder);
        if (order == StepOrder.Repeat)
        {
            if (_replay.TryReplay(step.StepId, out var cached))
            {
                _telemetry.Replayed.Add(1);
                await WriteAsync(new HopResponse { Result = cached }, ct);
                return;
            }
            // Applied and pushed downstream; its answer is still on its way back up.
            if (step.StepId == _lastStepId && !_host.IsFinal) return;
            throw Reject(_failures.Fail(HopFailureReason.StepNotCached, $"step {step.StepId} was already applied and is no longer cached (last applied {_lastStepId})"));
        }
        if (_validator.CheckShape(step, session.MaxTokens) is { } badShape) throw Reject(badShape);
        var rows = step.RowCount;
        var truncateTo = step.HasTruncateTo ? step.TruncateTo : -1;

        var input = session.RentInput(rows);
        if (!HiddenStateCodec.TryDecode(step.Hidden.Span, step.Dtype, input, out var finite))
            throw Reject(_failures.Fail(HopFailureReason.InvalidFrame, "undecodable hidden payload"));
        if (!finite)
            throw Reject(_failures.Fail(HopFailureReason.NonFiniteHidden, "hidden states contain NaN or infinity"));
        _telemetry.BytesIn.Add(step.Hidden.Length);

        using var activity = NodeTelemetry.Source.StartActivity("potluck.node.step", ActivityKind.Server,
            NodeTelemetry.ParentFrom(step.Traceparent, null) is { TraceId: var t } parent && t != default ? parent : _sessionParent);
        activity?.SetTag("potluck.session", session.Id);
        // Which stage served it, when several stages export into one trace backend.
        activity?.SetTag("potluck.node", _host.NodeId);
        activity?.SetTag("potluck.step", step.StepId);
        activity?.SetTag("potluck.rows", rows);
        if (step.Rebuild) activity?.SetTag("potluck.rebuild", true);

        // Rebuild steps only fill the KV: the final stage computes no more output rows than it must.
        var finalLastRowOnly = _host.IsFinal && (step.LastRowOnly || step.Rebuild);
        int outRows;
        try
        {
            outRows = await session.StepAsync(truncateTo, step.StartPosition, rows, finalLastRowOnly);
        }
        catch (Exception e) when (e is EngineException or SessionClosedException)
        {
            throw Reject(_failures.FromException(e));
        }
        StepTimeline.Mark(StepEvent.StageResumed, step.StepId);
        if (order != StepOrder.Rebuild) _lastStepId = step.StepId;
        _telemetry.Steps.Add(1);
        _telemetry.Rows.Add(rows);

        if (_downstream is null)
        {
            if (order == StepOrder.Rebuild) return;
            var result = BuildResult(step, session, outRows);
            _replay.Remember(result);
            _telemetry.BytesOut.Add(result.Hidden.Length);
            await WriteAsync(new HopResponse { Result = result }, ct);
            StepTimeline.Mark(StepEvent.StageResultWritten, step.StepId);
        }
        else
        {
            var payload = EncodeOutputs(session.OutputRows(outRows), outRows);
            var log = session.OutputLog!;
            if (truncateTo >= 0) log.Truncate(truncateTo);
            log.Append(step.StartPosition, outRows, _wireType, payload.Span);
            // A rebuild passes on only what the next stage lacks (it may have survived the failure).
            if (order != StepOrder.Rebuild || step.StartPosition >= _downstream.OpenedLength)
                await _downstream.ForwardAsync(step, payload, outRows, _wireType, ct);
            StepTimeline.Mark(StepEvent.StagePushed, step.StepId);
        }
        _telemetry.StepLatencyMs.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
    }

    private StepResult BuildResult(Step step, StageSession session, int outRows)
    {
        var width = _host.Width;
        var output = session.OutputRows(outRows);
        var element = HiddenStateCodec.BytesPerElement(_wireType);
        var selected = step.ReturnRows.Count > 0 ? step.ReturnRows.Count : outRows;
        var bytes = new byte[selected * width * element];
        if (step.ReturnRows.Count > 0)
        {
            for (var i = 0; i < step.ReturnRows.Count; i++)
                HiddenStateCodec.Encode(output.Slice(step.ReturnRows[i] * width, width), _wireType, bytes.AsSpan(i * width * element));
        }
        else
        {
            HiddenStateCodec.Encode(output, _wireType, bytes);
        }
        return new StepResult
        {
            SessionId = session.Id,
            StepId = step.StepId,
            RowCount = selected,
            Width = width,
            Dtype = _wireType,
            Hidden = UnsafeByteOperations.UnsafeWrap(bytes), // owned by the result from here on
            SessionLength = step.StartPosition + step.RowCount,
        };
    }

    /// <summary>Encodes this stage's outputs into the reused buffer (valid until the next step).</summary>
    private ReadOnlyMemory<byte> EncodeOutputs(ReadOnlySpan<float> output, int outRows)
    {
        var bytes = outRows * _host.Width * HiddenStateCodec.BytesPerElement(_wireType);
        if (_encodeBuffer.Length < bytes) _encodeBuffer = new byte[bytes];
        return _encodeBuffer.AsMemory(0, HiddenStateCodec.Encode(output, _wireType, _encodeBuffer));
    }

    private async ValueTask WriteAsync(HopResponse response, CancellationToken ct)
    {
        await _writeGate.WaitAsync(ct);
        try
        {
            await _responses.WriteAsync(response, ct);
        }
        finally
        {
            _writeGate.Release();
        }
    }

    /// <summary>
    /// Frees this stage's KV, or with <paramref name="detach"/> keeps it for a resume, and ends the outbound stream
    /// (gracefully, or by cancelling it: the next stage then detaches its part of the session too).
    /// </summary>
    private async Task FinishAsync(bool closeDownstreamGracefully, bool detach)
    {
        if (_finished) return;
        _finished = true;
        if (_session is { } session)
        {
            if (detach && !session.IsClosed) session.Detach(_attachment);
            else _host.Close(session.Id, cancelled: false);
        }
        if (_downstream is { } downstream) await downstream.FinishAsync(closeDownstreamGracefully);
    }
}
