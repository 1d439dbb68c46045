using System.Diagnostics;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Potluck.Node.Compute;
using Potluck.Node.Telemetry;
using Potluck.Protocol;
using Potluck.Protocol.V1;

namespace Potluck.Node.Hops;

/// <summary>
/// A non-final stage's stream to its next stage for one session, through the shared hop client: opens it with the
/// route's tail, passes on every step (the received frame with this stage's outputs as payload), rebuilds a
/// replacement next stage from the output log, and relays the final stage's answers back up. A failure of the next
/// stage keeps its reason and failing stage (<see cref="HopFailure.Relay"/>) and cancels <see cref="Failed"/>.
/// </summary>
internal sealed class DownstreamLink
{
    private static readonly TimeSpan OpenTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan CloseTimeout = TimeSpan.FromSeconds(5);

    private readonly MemberChannels _channels;
    private readonly StageFailures _failures;
    private readonly NodeTelemetry _telemetry;
    private readonly ILogger _log;
    // The model's hidden size: every stage's rows have it.
    private readonly int _width;
    private readonly CancellationTokenSource _failed = new();
    private readonly List<(int Start, int Rows)> _rebuildSteps = [];
    private SessionHopClient? _client;
    private Task? _relay;
    private HopStage _next;
    private volatile RpcException? _error;
    private volatile bool _closing;

    public DownstreamLink(MemberChannels channels, StageFailures failures, int width, NodeTelemetry telemetry, ILogger log)
    {
        _width = width;
        _channels = channels;
        _failures = failures;
        _telemetry = telemetry;
        _log = log;
    }

    /// <summary>Cancelled when the next stage fails or the link is finished.</summary>
    public CancellationToken Failed => _failed.Token;

    /// <summary>The next stage's failure, with the path from this stage, once it failed.</summary>
    public RpcException? Error => _error;

    /// <summary>"node X at endpoint": the next stage in messages.</summary>
    public string Name { get; private set; } = "";

    /// <summary>Positions the next stage held when it opened: rebuild steps below it are not passed on.</summary>
    public int OpenedLength { get; private set; }

    private string Path => $"{_failures.Where} → {Name}";

    /// <summary>
    /// Opens the session on <paramref name="next"/> (the next stage the route ticket names; the tail of
    /// <paramref name="received"/> was checked against it) and starts relaying its answers to <paramref name="relayUp"/>.
    /// Returns what the next stage (and every stage after it) opened.
    /// </summary>
    public async Task<SessionOpened> OpenAsync(OpenSession received, RouteHop next, Func<HopResponse, ValueTask> relayUp, CancellationToken ct)
    {
        _next = new HopStage(next.NodeId, next.LayerStart, next.LayerEnd);
        Name = $"node {next.NodeId} at {next.Endpoint}";
        try
        {
            // The outbound call lives exactly as long as this session's inbound stream (until Failed).
            _client = await SessionHopClient.OpenAsync(_channels.Get(next.Endpoint, next.NodeId).CreateCallInvoker(), HopFrames.ForNextStage(received), _width,
                OpenTimeout, ct, callLifetime: _failed.Token);
        }
        catch (RpcException e) when (HopFailure.Read(e).Stage is not null)
        {
            // A stage refused the open (its failure names it): reason and failing stage go up unchanged.
            throw HopFailure.Relay(e, Path, _next);
        }
        catch (Exception e) when (e is RpcException or HttpRequestException or IOException)
        {
            // Never say why the dial failed: closed, open, HTTP/1.1 and TLS ports must all read the same.
            _log.LogDebug("Dialling {Downstream} failed: {Error}", Name, e.Message);
            throw HopFailure.Exception(HopFailureReason.StageUnreachable, $"{Path}: next stage {next.NodeId} unreachable", _next);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw HopFailure.Exception(HopFailureReason.Timeout, $"{Path}: no answer to open within {OpenTimeout.TotalSeconds} s", _next);
        }
        OpenedLength = _client.FirstStageLength;
        _relay = Task.Run(() => RelayAsync(relayUp), CancellationToken.None);
        return _client.Opened;
    }

    /// <summary>Passes on <paramref name="received"/> with this stage's outputs (<paramref name="payload"/>) as its rows.</summary>
    public async ValueTask ForwardAsync(Step received, ReadOnlyMemory<byte> payload, int rows, HiddenType dtype, CancellationToken ct)
    {
        try
        {
            await _client!.ForwardAsync(received, payload, rows, dtype, ct);
        }
        catch (RpcException e)
        {
            throw HopFailure.Relay(e, Path, _next);
        }
        catch (InvalidOperationException) when (_error is { } downstream)
        {
            throw downstream;
        }
        _telemetry.BytesOut.Add(payload.Length);
    }

    /// <summary>
    /// The next stage holds fewer positions than this one (it replaced a failed stage): send it the outputs this stage
    /// kept for the session, in the steps they were first sent in, so it rebuilds its KV up to <paramref name="to"/>.
    /// </summary>
    public async Task RebuildAsync(StageOutputLog log, string sessionId, int to, HiddenType wireType, CancellationToken ct)
    {
        var from = OpenedLength;
        var why = log.TryGetSteps(from, _rebuildSteps);
        if (why is null && log.Length < to) why = $"it logged {log.Length} of the session's {to} positions";
        if (why is null && _rebuildSteps.Count > 0 && log.Dtype != wireType) why = $"the outputs were kept as {log.Dtype}, the session now uses {wireType}";
        if (why is not null) throw _failures.Fail(HopFailureReason.CannotRebuild, $"cannot rebuild {Name} from position {from}: {why}");

        var started = Stopwatch.GetTimestamp();
        var rows = 0;
        foreach (var (start, count) in _rebuildSteps)
        {
            if (start >= to) break;
            var payload = log.Rows(start, count);
            try
            {
                await _client!.RebuildAsync(payload, log.Dtype, count, start, ct);
            }
            catch (RpcException e)
            {
                throw HopFailure.Relay(e, Path, _next);
            }
            rows += count;
            _telemetry.BytesOut.Add(payload.Length);
        }
        _telemetry.RebuildRows.Add(rows);
        _log.LogInformation("Rebuilding session {Session} on {Downstream}: sent {Rows} kept rows in {Steps} steps in {Ms:F1} ms",
            sessionId, Name, rows, _rebuildSteps.Count, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
    }

    /// <summary>Carries the final stage's answers back up; a failure of the next stage fails this link.</summary>
    private async Task RelayAsync(Func<HopResponse, ValueTask> relayUp)
    {
        var responses = _client!.Responses;
        try
        {
            while (await responses.MoveNext(_failed.Token))
            {
                var response = responses.Current;
                if (response.KindCase == HopResponse.KindOneofCase.Result) await relayUp(response);
                else if (response.KindCase == HopResponse.KindOneofCase.Closed) return;
            }
            if (!_closing) Fail(HopFailure.Exception(HopFailureReason.SessionClosed, "ended the session", _next));
        }
        catch (RpcException e) when (!_closing)
        {
            Fail(e);
        }
        catch (Exception e) when (e is OperationCanceledException || _closing)
        {
            // Our own shutdown of the call.
        }
        catch (Exception e)
        {
            Fail(HopFailure.Exception(HopFailureReason.Internal, e.Message, _failures.Self));
        }
    }

    private void Fail(RpcException e)
    {
        _error = HopFailure.Relay(e, Path, _next);
        try { _failed.Cancel(); } catch (ObjectDisposedException) { }
    }

    /// <summary>
    /// Ends the outbound stream: <paramref name="graceful"/> completes it and waits for the next stage to finish (it then
    /// frees the session), otherwise the call is cancelled (the next stage then detaches its part of the session).
    /// </summary>
    public async Task FinishAsync(bool graceful)
    {
        _closing = true;
        if (_client is not { } client) return;
        try
        {
            if (graceful && _error is null)
            {
                using var timeout = new CancellationTokenSource(CloseTimeout);
                await client.CompleteAsync().WaitAsync(timeout.Token);
                if (_relay is not null) await _relay.WaitAsync(timeout.Token);
            }
        }
        catch (Exception e) when (e is RpcException or OperationCanceledException or InvalidOperationException or TimeoutException)
        {
            _log.LogDebug("Downstream {Downstream} did not end cleanly: {Error}", Name, e.Message);
        }
        finally
        {
            try { _failed.Cancel(); } catch (ObjectDisposedException) { }
            await client.DisposeAsync();
        }
    }
}
