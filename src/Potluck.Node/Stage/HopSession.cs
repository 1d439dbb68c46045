using System.Buffers;
using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Potluck.Protocol.Diagnostics;
using Potluck.Protocol.V1;
using Potluck.Protocol;
using Potluck.Inference;
using Potluck.Node.Compute;
using Potluck.Node.Telemetry;
using GrpcStage = Potluck.Protocol.V1.Stage;

namespace Potluck.Node.Stage;

/// <summary>
/// One inbound Hop stream: validates every frame, runs steps on the span, pushes outputs to the next
/// stage (keeping them in the session's output log) and relays the final stage's rows back up. A close, or the
/// caller completing its side, frees the session here and downstream; a rejected frame or an engine error frees
/// it too. When the route breaks instead (the caller's stream or the next stage fails), the session is detached:
/// its KV and output log wait for the gateway to resume it on a repaired route (see OpenSession.resume).
/// </summary>
internal sealed class HopSession
{
    private const int ReplayCacheSize = 4;
    private static readonly TimeSpan DownstreamOpenTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan TakeoverTimeout = TimeSpan.FromSeconds(5);

    private readonly SpanHost _host;
    private readonly StageChannels _channels;
    private readonly NodeTelemetry _telemetry;
    private readonly ILogger _log;
    private readonly IServerStreamWriter<HopResponse> _responses;
    private readonly ServerCallContext _context;
    private readonly SemaphoreSlim _writeGate = new(1, 1);
    private readonly StepResult?[] _replayCache = new StepResult?[ReplayCacheSize];
    private readonly CancellationTokenSource _downstreamFailed = new();

    private StageSession? _session;
    private CancellationToken _attachment;
    // Close (free) rather than detach when the stream ends: set by rejected frames and engine errors.
    private bool _closeOnFinish;
    // Rebuild steps are accepted only until the first normal step after open.
    private ulong _openedAfterStepId;
    // Positions the next stage held when it opened: rebuild steps below it are not passed on.
    private int _downstreamLength;
    private HiddenType _wireType;
    private ActivityContext _sessionParent;
    private ulong _lastStepId;
    private AsyncDuplexStreamingCall<HopRequest, HopResponse>? _downstream;
    private string _downstreamName = "";
    private Task? _relay;
    private volatile RpcException? _downstreamError;
    private volatile bool _finished;
    private byte[] _encodeBuffer = [];
    // Reused for every forwarded step: serialized inside WriteAsync, so safe to refill afterwards.
    private readonly HopRequest _forwardRequest = new() { Step = new Step() };

    public HopSession(SpanHost host, StageChannels channels, NodeTelemetry telemetry, ILogger log,
        IServerStreamWriter<HopResponse> responses, ServerCallContext context)
    {
        _host = host;
        _channels = channels;
        _telemetry = telemetry;
        _log = log;
        _responses = responses;
        _context = context;
    }

    private string Where => $"node {_host.NodeId} layers [{_host.LayerStart},{_host.LayerEnd})";

    public async Task RunAsync(IAsyncStreamReader<HopRequest> requests)
    {
        var callToken = _context.CancellationToken;
        if (!await requests.MoveNext(callToken)) return;
        var first = requests.Current;
        if (first.KindCase == HopRequest.KindOneofCase.Step)
            throw Reject(StageErrors.NotFound($"{Where}: session '{first.Step.SessionId}' is not open on this stream; send open first"));
        if (first.KindCase != HopRequest.KindOneofCase.Open)
            throw Reject(StageErrors.Invalid($"{Where}: the first frame of a hop must be open, got {first.KindCase}"));

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
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(callToken, session.Closed, _downstreamFailed.Token, _attachment);
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
                                throw Reject(StageErrors.Invalid($"{Where}: close for session '{request.Close.SessionId}' on the stream of session '{session.Id}'"));
                            await FinishAsync(closeDownstreamGracefully: true, detach: false);
                            await WriteAsync(new HopResponse { Closed = new SessionClosed { SessionId = session.Id } }, callToken);
                            return;
                        case HopRequest.KindOneofCase.Open:
                            throw Reject(StageErrors.Precondition($"{Where}: session '{session.Id}' is already open on this stream"));
                        default:
                            throw Reject(StageErrors.Invalid($"{Where}: empty frame"));
                    }
                }
                // The caller completed its side: the session is over on this stage and downstream.
                await FinishAsync(closeDownstreamGracefully: true, detach: false);
            }
            catch (OperationCanceledException) when (!callToken.IsCancellationRequested)
            {
                if (_downstreamError is { } downstream) throw downstream;
                if (session.IsClosed)
                {
                    if (session.WasCancelled) throw new RpcException(new Status(StatusCode.Cancelled, $"{Where}: session '{session.Id}' was cancelled"));
                    return; // closed through the control plane: end the stream cleanly
                }
                if (_attachment.IsCancellationRequested)
                    throw new RpcException(new Status(StatusCode.Aborted, $"{Where}: session '{session.Id}' was taken over by a resuming stream"));
                throw;
            }
        }
        catch (EngineException e)
        {
            throw Reject(StageErrors.FromException(e, Where));
        }
        catch (SessionClosedException e)
        {
            _closeOnFinish = true;
            throw StageErrors.FromException(e, Where);
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
        if (string.IsNullOrEmpty(open.SessionId) || open.SessionId.Length > 200)
            throw Reject(StageErrors.Invalid($"{Where}: session_id must be 1-200 characters"));
        if (open.ModelId != _host.ModelId)
            throw Reject(StageErrors.Precondition($"{Where}: holds model {_host.ModelId}, the route was planned for {open.ModelId}"));
        if (open.LayerStart != _host.LayerStart || open.LayerEnd != _host.LayerEnd)
            throw Reject(StageErrors.Precondition($"{Where}: asked to run layers [{open.LayerStart},{open.LayerEnd})"));
        if (open.MaxTokens <= 0 || open.MaxTokens > _host.ContextLength)
            throw Reject(StageErrors.Invalid($"{Where}: max_tokens {open.MaxTokens} must be in [1, {_host.ContextLength}]"));
        if (!HiddenStateCodec.IsKnown(open.WireType))
            throw Reject(StageErrors.Invalid($"{Where}: unknown wire_type {(int)open.WireType}"));
        if (open.Resume && (open.ResumeLength < 0 || open.ResumeLength > open.MaxTokens))
            throw Reject(StageErrors.Invalid($"{Where}: resume_length {open.ResumeLength} outside [0, {open.MaxTokens}]"));
        if (!open.Resume && (open.ResumeLength != 0 || open.LastStepId != 0))
            throw Reject(StageErrors.Invalid($"{Where}: resume_length and last_step_id need resume"));
        ValidateRouteTail(open);

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
            var downstreamOpened = await OpenDownstreamAsync(open, ct);
            opened.Stages.AddRange(downstreamOpened.Stages);
            _downstreamLength = downstreamOpened.Stages.Count > 0 ? downstreamOpened.Stages[0].SessionLength : 0;
            if (_downstreamLength < length) await RebuildDownstreamAsync(session, _downstreamLength, length, ct);
        }
        await WriteAsync(new HopResponse { Opened = opened }, ct);
    }

    private RpcException AlreadyAttached(string sessionId) =>
        new(new Status(StatusCode.AlreadyExists, $"{Where}: session '{sessionId}' is already attached to another stream"));

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

    /// <summary>
    /// The next stage holds fewer positions than this one (it replaced a failed stage): send it the outputs this
    /// stage kept for the session, in the steps they were first sent in, so it rebuilds its KV.
    /// </summary>
    private async Task RebuildDownstreamAsync(StageSession session, int from, int to, CancellationToken ct)
    {
        var log = session.OutputLog!;
        var steps = new List<(int Start, int Rows)>();
        var why = log.TryGetSteps(from, steps);
        if (why is null && log.Length < to) why = $"it logged {log.Length} of the session's {to} positions";
        if (why is null && steps.Count > 0 && log.Dtype != _wireType) why = $"the outputs were kept as {log.Dtype}, the session now uses {_wireType}";
        if (why is not null)
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"{Where}: cannot rebuild {_downstreamName} from position {from}: {why}"));
        var started = Stopwatch.GetTimestamp();
        var request = new HopRequest { Step = new Step() };
        var step = request.Step;
        step.SessionId = session.Id;
        step.Rebuild = true;
        step.Width = _host.Width;
        step.Dtype = log.Dtype;
        step.LastRowOnly = true;
        var rows = 0;
        foreach (var (start, count) in steps)
        {
            if (start >= to) break;
            step.StartPosition = start;
            step.RowCount = count;
            step.Hidden = UnsafeByteOperations.UnsafeWrap(log.Rows(start, count));
            try
            {
                await _downstream!.RequestStream.WriteAsync(request, ct);
            }
            catch (RpcException e)
            {
                throw new RpcException(new Status(e.StatusCode, $"{Where} → {_downstreamName}: {e.Status.Detail}"));
            }
            rows += count;
            _telemetry.BytesOut.Add(step.Hidden.Length);
        }
        _telemetry.RebuildRows.Add(rows);
        _log.LogInformation("Rebuilding session {Session} on {Downstream}: sent {Rows} kept rows in {Steps} steps in {Ms:F1} ms",
            session.Id, _downstreamName, rows, steps.Count, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
    }

    private void ValidateRouteTail(OpenSession open)
    {
        if (_host.IsFinal)
        {
            if (open.Next.Count != 0) throw Reject(StageErrors.Invalid($"{Where}: is the final stage but the route continues"));
            return;
        }
        var expect = _host.LayerEnd;
        foreach (var hop in open.Next)
        {
            if (hop.LayerStart != expect || hop.LayerEnd <= hop.LayerStart || hop.LayerEnd > _host.LayerCount)
                throw Reject(StageErrors.Invalid($"{Where}: route hop {hop.NodeId} [{hop.LayerStart},{hop.LayerEnd}) does not continue at layer {expect}"));
            if (!StageChannels.IsValidEndpoint(hop.Endpoint))
                throw Reject(StageErrors.Invalid($"{Where}: route hop {hop.NodeId} has no valid http(s) endpoint: '{hop.Endpoint}'"));
            expect = hop.LayerEnd;
        }
        if (expect != _host.LayerCount)
            throw Reject(StageErrors.Invalid($"{Where}: route ends at layer {expect}, the model has {_host.LayerCount}"));
    }

    private async Task<SessionOpened> OpenDownstreamAsync(OpenSession open, CancellationToken ct)
    {
        var next = open.Next[0];
        _downstreamName = $"node {next.NodeId} at {next.Endpoint}";
        var client = new GrpcStage.StageClient(_channels.Get(next.Endpoint));
        // The outbound call lives exactly as long as this session's inbound stream.
        _downstream = client.Hop(cancellationToken: _downstreamFailed.Token);
        var forward = new OpenSession
        {
            SessionId = open.SessionId,
            ModelId = open.ModelId,
            LayerStart = next.LayerStart,
            LayerEnd = next.LayerEnd,
            MaxTokens = open.MaxTokens,
            WireType = open.WireType,
            Traceparent = Activity.Current?.Id ?? open.Traceparent,
            Tracestate = Activity.Current?.TraceStateString ?? open.Tracestate,
            Resume = open.Resume,
            ResumeLength = open.ResumeLength,
            LastStepId = open.LastStepId,
        };
        for (var i = 1; i < open.Next.Count; i++) forward.Next.Add(open.Next[i]);

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(DownstreamOpenTimeout);
        try
        {
            await _downstream.RequestStream.WriteAsync(new HopRequest { Open = forward }, timeout.Token);
            if (!await _downstream.ResponseStream.MoveNext(timeout.Token))
                throw new RpcException(new Status(StatusCode.Unavailable, "ended the stream without answering open"));
            var answer = _downstream.ResponseStream.Current;
            if (answer.KindCase != HopResponse.KindOneofCase.Opened)
                throw new RpcException(new Status(StatusCode.Internal, $"answered open with {answer.KindCase}"));
            _relay = Task.Run(RelayAsync, CancellationToken.None);
            return answer.Opened;
        }
        catch (RpcException e)
        {
            throw new RpcException(new Status(e.StatusCode, $"{Where} → {_downstreamName}: {e.Status.Detail}"));
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.DeadlineExceeded, $"{Where} → {_downstreamName}: no answer to open within {DownstreamOpenTimeout.TotalSeconds} s"));
        }
    }

    /// <summary>Carries the final stage's rows back up this stream; a downstream failure fails this stream.</summary>
    private async Task RelayAsync()
    {
        var call = _downstream!;
        try
        {
            while (await call.ResponseStream.MoveNext(_downstreamFailed.Token))
            {
                var response = call.ResponseStream.Current;
                if (response.KindCase == HopResponse.KindOneofCase.Result)
                {
                    StepTimeline.Mark(StepEvent.StageRelayReceived, response.Result.StepId);
                    Remember(response.Result);
                    _telemetry.BytesOut.Add(response.Result.Hidden.Length);
                    await WriteAsync(response, _context.CancellationToken);
                    StepTimeline.Mark(StepEvent.StageRelayWritten, response.Result.StepId);
                }
                else if (response.KindCase == HopResponse.KindOneofCase.Closed)
                {
                    return;
                }
            }
            if (!_finished) FailFromDownstream(new RpcException(new Status(StatusCode.Aborted, "ended the session")));
        }
        catch (RpcException e) when (!_finished)
        {
            FailFromDownstream(e);
        }
        catch (Exception e) when (e is OperationCanceledException || _finished)
        {
            // Our own shutdown of the call.
        }
        catch (Exception e)
        {
            FailFromDownstream(new RpcException(new Status(StatusCode.Internal, e.Message)));
        }
    }

    private void FailFromDownstream(RpcException e)
    {
        _downstreamError = new RpcException(new Status(e.StatusCode, $"{Where} → {_downstreamName}: {e.Status.Detail}"));
        try { _downstreamFailed.Cancel(); } catch (ObjectDisposedException) { }
    }

    private async ValueTask HandleStepAsync(Step step, CancellationToken ct)
    {
        var started = Stopwatch.GetTimestamp();
        StepTimeline.Mark(StepEvent.StageReceived, step.StepId);
        var session = _session!;
        if (step.SessionId != session.Id)
            throw Reject(StageErrors.Invalid($"{Where}: step for session '{step.SessionId}' on the stream of session '{session.Id}'"));
        if (step.Rebuild)
        {
            if (step.StepId != 0)
                throw Reject(StageErrors.Invalid($"{Where}: rebuild steps carry step_id 0, got {step.StepId}"));
            if (_lastStepId != _openedAfterStepId)
                throw Reject(StageErrors.Precondition($"{Where}: rebuild steps must come before the session's next step"));
            if (step.HasTruncateTo || step.RowCount == 0)
                throw Reject(StageErrors.Invalid($"{Where}: a rebuild step carries rows and no truncate_to"));
        }
        else if (step.StepId == 0)
            throw Reject(StageErrors.Invalid($"{Where}: step_id starts at 1"));
        else if (step.StepId <= _lastStepId)
        {
            if (TryReplay(step.StepId, out var cached))
            {
                _telemetry.Replayed.Add(1);
                await WriteAsync(new HopResponse { Result = cached }, ct);
                return;
            }
            // Applied and pushed downstream; its answer is still on its way back up.
            if (step.StepId == _lastStepId && !_host.IsFinal) return;
            throw Reject(StageErrors.Precondition($"{Where}: step {step.StepId} was already applied and is no longer cached (last applied {_lastStepId})"));
        }
        if (!step.Rebuild && step.StepId != _lastStepId + 1)
            throw Reject(StageErrors.Precondition($"{Where}: step {step.StepId} is out of order; expected {_lastStepId + 1}"));

        var width = _host.Width;
        if (step.Width != width)
            throw Reject(StageErrors.Invalid($"{Where}: width {step.Width}, the model's hidden size is {width}"));
        if (!HiddenStateCodec.IsKnown(step.Dtype))
            throw Reject(StageErrors.Invalid($"{Where}: unknown dtype {(int)step.Dtype}"));
        var rows = step.RowCount;
        if (rows < 0 || rows > _host.MaxRowsPerStep)
            throw Reject(StageErrors.Invalid($"{Where}: row_count {rows} must be in [0, {_host.MaxRowsPerStep}]"));
        var truncateTo = step.HasTruncateTo ? step.TruncateTo : -1;
        if (step.HasTruncateTo && (truncateTo < 0 || truncateTo > session.MaxTokens))
            throw Reject(StageErrors.Invalid($"{Where}: truncate_to {truncateTo} outside [0, {session.MaxTokens}]"));
        if (rows == 0 && !step.HasTruncateTo)
            throw Reject(StageErrors.Invalid($"{Where}: a step needs rows or truncate_to"));
        if (step.StartPosition < 0 || (long)step.StartPosition + rows > session.MaxTokens)
            throw Reject(new RpcException(new Status(StatusCode.OutOfRange, $"{Where}: positions [{step.StartPosition},{(long)step.StartPosition + rows}) exceed the session's {session.MaxTokens} reserved tokens")));
        var expectedBytes = (long)rows * width * HiddenStateCodec.BytesPerElement(step.Dtype);
        if (step.Hidden.Length != expectedBytes)
            throw Reject(StageErrors.Invalid($"{Where}: hidden holds {step.Hidden.Length} bytes, {rows}×{width} {step.Dtype} needs {expectedBytes}"));
        if (step.LastRowOnly && step.ReturnRows.Count > 0)
            throw Reject(StageErrors.Invalid($"{Where}: last_row_only and return_rows are exclusive"));
        var previous = -1;
        foreach (var r in step.ReturnRows)
        {
            if (r <= previous || r >= rows)
                throw Reject(StageErrors.Invalid($"{Where}: return_rows must be ascending row indices below {rows}"));
            previous = r;
        }

        var input = session.RentInput(rows);
        if (!HiddenStateCodec.TryDecode(step.Hidden.Span, step.Dtype, input, out var finite))
            throw Reject(StageErrors.Invalid($"{Where}: undecodable hidden payload"));
        if (!finite)
            throw Reject(StageErrors.Invalid($"{Where}: hidden states contain NaN or infinity"));
        _telemetry.BytesIn.Add(expectedBytes);

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
            throw Reject(StageErrors.FromException(e, Where));
        }
        StepTimeline.Mark(StepEvent.StageResumed, step.StepId);
        if (!step.Rebuild) _lastStepId = step.StepId;
        _telemetry.Steps.Add(1);
        _telemetry.Rows.Add(rows);

        if (_host.IsFinal)
        {
            if (step.Rebuild) return;
            var result = BuildResult(step, session, outRows);
            Remember(result);
            _telemetry.BytesOut.Add(result.Hidden.Length);
            await WriteAsync(new HopResponse { Result = result }, ct);
            StepTimeline.Mark(StepEvent.StageResultWritten, step.StepId);
        }
        else
        {
            var bytes = EncodeForward(session.OutputRows(outRows), outRows);
            var log = session.OutputLog!;
            if (truncateTo >= 0) log.Truncate(truncateTo);
            log.Append(step.StartPosition, outRows, _wireType, _encodeBuffer.AsSpan(0, bytes));
            // A rebuild passes on only what the next stage lacks (it may have survived the failure).
            if (!step.Rebuild || step.StartPosition >= _downstreamLength) await ForwardAsync(step, bytes, outRows, ct);
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

    private int EncodeForward(ReadOnlySpan<float> output, int outRows)
    {
        var bytes = outRows * _host.Width * HiddenStateCodec.BytesPerElement(_wireType);
        if (_encodeBuffer.Length < bytes) _encodeBuffer = new byte[bytes];
        return HiddenStateCodec.Encode(output, _wireType, _encodeBuffer);
    }

    private async ValueTask ForwardAsync(Step step, int bytes, int outRows, CancellationToken ct)
    {
        var forward = _forwardRequest.Step;
        forward.SessionId = step.SessionId;
        forward.StepId = step.StepId;
        if (step.HasTruncateTo) forward.TruncateTo = step.TruncateTo;
        else forward.ClearTruncateTo();
        forward.StartPosition = step.StartPosition;
        forward.RowCount = outRows;
        forward.Width = _host.Width;
        forward.Dtype = _wireType;
        forward.Hidden = UnsafeByteOperations.UnsafeWrap(_encodeBuffer.AsMemory(0, bytes));
        forward.LastRowOnly = step.LastRowOnly;
        forward.ReturnRows.Clear();
        forward.ReturnRows.Add(step.ReturnRows);
        forward.Traceparent = Activity.Current?.Id ?? "";
        forward.Rebuild = step.Rebuild;
        try
        {
            await _downstream!.RequestStream.WriteAsync(_forwardRequest, ct);
        }
        catch (RpcException e)
        {
            throw new RpcException(new Status(e.StatusCode, $"{Where} → {_downstreamName}: {e.Status.Detail}"));
        }
        catch (InvalidOperationException) when (_downstreamError is { } downstream)
        {
            throw downstream;
        }
        _telemetry.BytesOut.Add(bytes);
    }

    private void Remember(StepResult result) => _replayCache[(int)(result.StepId % ReplayCacheSize)] = result;

    private bool TryReplay(ulong stepId, out StepResult result)
    {
        var cached = _replayCache[(int)(stepId % ReplayCacheSize)];
        if (cached is not null && cached.StepId == stepId)
        {
            result = cached.Clone();
            result.Replayed = true;
            return true;
        }
        result = null!;
        return false;
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
        if (_downstream is { } call)
        {
            try
            {
                if (closeDownstreamGracefully && _downstreamError is null)
                {
                    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                    await call.RequestStream.CompleteAsync().WaitAsync(timeout.Token);
                    if (_relay is not null) await _relay.WaitAsync(timeout.Token);
                }
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException or InvalidOperationException or TimeoutException)
            {
                _log.LogDebug("Downstream {Downstream} did not end cleanly: {Error}", _downstreamName, e.Message);
            }
            finally
            {
                try { _downstreamFailed.Cancel(); } catch (ObjectDisposedException) { }
                call.Dispose();
            }
        }
    }
}
