using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Potluck.Cluster;
using Potluck.Inference.Engine;
using Potluck.Gateway.Routing;
using Potluck.Gateway.Sessions;
using Potluck.Gateway.Telemetry;
using Potluck.Protocol;
using Potluck.Protocol.Diagnostics;
using Potluck.Protocol.V1;

namespace Potluck.Gateway.Streaming;

/// <summary>Where a generation's route stands.</summary>
public enum RouteState
{
    /// <summary>No route: the next feed plans one and replays every token fed so far (the start, or after a full replay was chosen).</summary>
    Unrouted,
    /// <summary>A route is open and answering.</summary>
    Open,
    /// <summary>The route failed; its stages keep the session detached, and the next feed resumes it on a repaired route.</summary>
    Broken,
    /// <summary>Closed or dropped for good.</summary>
    Closed,
}

/// <summary>
/// One generation's route through the pool, kept alive across stage failures. It feeds tokens (embedded by the head)
/// through the route and leaves the last row's final hidden state in <see cref="LastRow"/>. When a stage fails, the
/// <see cref="FailoverPolicy"/> decides: resume on a re-planned route (surviving stages keep their KV, and a
/// replacement rebuilds its span from what its upstream stage kept, or from the token ids when it is the first
/// stage), or replay the whole route from the token ids, or give up. Not thread-safe; one consumer.
/// </summary>
internal sealed class ResilientRoute
{
    private const int MaxRouteAttempts = 4;
    private static readonly TimeSpan CloseTimeout = TimeSpan.FromSeconds(5);

    private readonly GenerationService _service;
    private readonly string _sessionId;
    private readonly ISessionGrain _grain;
    private readonly int _sessionTokens;
    private readonly float[] _lastRow;
    private readonly List<int> _fed;
    // _fed length after each FeedAsync call: a replay repeats exactly these steps (see ReplayAsync).
    private readonly List<int> _stepEnds;
    private readonly HashSet<string> _failedNodes = new(StringComparer.Ordinal);
    // Of _failedNodes, those that are alive but out of KV: avoided while re-planning, never written off.
    private readonly HashSet<string> _fullNodes = new(StringComparer.Ordinal);
    private OpenRoute? _route;
    // The broken route a failover resumes: its plan, session id and last answered step.
    private OpenRoute? _broken;
    // Counts the current route's stages in the gateway's live load while this generation holds it.
    private IDisposable? _routeLease;
    private int _routeGeneration;

    public ResilientRoute(GenerationService service, string sessionId, ISessionGrain grain, int sessionTokens, int maxSteps)
    {
        _service = service;
        _sessionId = sessionId;
        _grain = grain;
        _sessionTokens = sessionTokens;
        _lastRow = new float[service.Model.Width];
        _fed = new List<int>(sessionTokens);
        _stepEnds = new List<int>(maxSteps);
    }

    public RouteState State { get; private set; } = RouteState.Unrouted;

    public RoutePlan? Plan => _route?.Plan;

    public int Reroutes { get; private set; }

    /// <summary>Times this generation gave its KV back because the pool was full, to re-prefill when room returned.</summary>
    public int Preemptions { get; private set; }

    /// <summary>
    /// KV positions a fresh route must have free for this session: what it holds now plus one block. Stages charge KV
    /// block by block as a session grows, so a route is not refused for room the session may never use.
    /// </summary>
    private int RoomNeeded => Math.Min(_sessionTokens, _fed.Count + LayerSpan.KvBlockTokens);

    /// <summary>Tokens fed so far (the session's KV length on every stage).</summary>
    public int Length => _fed.Count;

    /// <summary>Final hidden state of the last token fed (before the output norm).</summary>
    public ReadOnlySpan<float> LastRow => _lastRow;

    /// <summary>Feeds <paramref name="tokens"/> after everything fed so far, failing over as the policy decides.</summary>
    public async Task FeedAsync(int[] tokens, CancellationToken ct)
    {
        var start = _fed.Count;
        _fed.AddRange(tokens);
        _stepEnds.Add(_fed.Count);
        // When this step first found the pool without KV room (the wait for room is bounded per step).
        long? waitingSince = null;
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                switch (State)
                {
                    case RouteState.Broken:
                        await ResumeAsync(start, ct);
                        await PrefillAsync(start, _fed.Count, ct);
                        break;
                    case RouteState.Unrouted:
                        await ConnectAsync(null, ct);
                        // A fresh route has no KV: replay everything fed so far, including these tokens.
                        await ReplayAsync(_stepEnds.Count, rebuild: false, ct);
                        break;
                    case RouteState.Open:
                        await PrefillAsync(start, _fed.Count, ct);
                        break;
                    default:
                        throw new InvalidOperationException("the route is closed");
                }
                return;
            }
            catch (RpcException e) when (!ct.IsCancellationRequested)
            {
                var failure = HopFailure.Read(e);
                var decision = FailoverPolicy.Decide(failure.Reason, resuming: _broken is not null);
                if (decision.Action == FailoverAction.ReplayWholeRoute && attempt < MaxRouteAttempts)
                {
                    // A stage could not rebuild its replacement (its kept outputs were dropped): replace the whole route.
                    _service.Log.LogWarning("Session {Session}: cannot resume route {Route} ({Reason}: {Detail}); replaying the whole route", _sessionId,
                        _broken?.Plan, HopFailure.NameOf(failure.Reason), e.Status.Detail);
                    await AbandonBrokenRouteAsync(waitForClose: false);
                    await DropRouteAsync(cancelled: true, waitForClose: false);
                    State = RouteState.Unrouted;
                }
                else if (decision.Action == FailoverAction.Resume && attempt < MaxRouteAttempts)
                {
                    var failed = _route ?? _broken;
                    _service.Log.LogWarning("Session {Session}: route {Route} failed ({Status} {Reason} at {Stage}: {Detail}); re-planning", _sessionId,
                        failed?.Plan.ToString() ?? "(opening)", e.StatusCode, HopFailure.NameOf(failure.Reason),
                        failure.Stage?.ToString() ?? "?", e.Status.Detail);
                    await FindFailedStagesAsync(failed?.Plan, failure, decision, ct);
                    if (_route is { } route)
                    {
                        // Ending our stream detaches the session on every stage: they keep its KV for the resume.
                        _route = null;
                        await route.Client.DisposeAsync();
                        _broken = route;
                    }
                    State = _broken is not null ? RouteState.Broken : RouteState.Unrouted;
                    Reroutes++;
                    _service.Telemetry.Reroutes.Add(1);
                }
                else
                {
                    await AbandonBrokenRouteAsync(waitForClose: true);
                    throw new RouteFailedException($"the route failed: {e.Status.StatusCode}: {e.Status.Detail}", e);
                }
            }
            catch (PoolUnavailableException e) when ((_fullNodes.Count > 0 || e.MissingLayers.Count == 0) && !ct.IsCancellationRequested)
            {
                // Every route left runs through a stage out of KV. Nothing failed: give this session's KV back (so
                // the others can finish), wait for room, then re-prefill from the token ids in the recorded step
                // shapes, which reproduces the KV and the text exactly.
                if (_route is not null || _broken is not null) await PreemptAsync();
                ForgetFull();
                waitingSince ??= Stopwatch.GetTimestamp();
                await WaitForRoomAsync(waitingSince.Value, ct);
                attempt = 0;
            }
            catch (PoolUnavailableException) when (_broken is not null)
            {
                // No replica for the failed span: free the session's KV on the stages that survived before reporting it.
                await AbandonBrokenRouteAsync(waitForClose: true);
                throw;
            }
        }
    }

    private void AvoidFull(string nodeId)
    {
        _failedNodes.Add(nodeId);
        _fullNodes.Add(nodeId);
    }

    /// <summary>Frees this session on every stage that holds it, full ones included; the next feed replays it on a fresh route.</summary>
    private async Task PreemptAsync()
    {
        _failedNodes.ExceptWith(_fullNodes);
        await AbandonBrokenRouteAsync(waitForClose: true);
        await DropRouteAsync(cancelled: true, waitForClose: true);
        ReleaseLoad();
        _routeLease = null;
        State = RouteState.Unrouted;
        Preemptions++;
        _service.Telemetry.Preempted();
        _service.Log.LogInformation("Session {Session}: the pool is out of KV; gave back {Tokens} positions to re-prefill when room returns", _sessionId, _fed.Count);
    }

    // Planning sees full stages again once room may have returned.
    private void ForgetFull()
    {
        _failedNodes.ExceptWith(_fullNodes);
        _fullNodes.Clear();
    }

    /// <summary>Waits until the pool shows a chain of stages with room for this session, up to <see cref="GatewayOptions.KvWaitTimeout"/>.</summary>
    private async Task WaitForRoomAsync(long started, CancellationToken ct)
    {
        var timeout = _service.Options.KvWaitTimeout;
        var delay = TimeSpan.FromMilliseconds(50);
        while (true)
        {
            var pool = await _service.Pool.RefreshAsync(ct);
            if (RoutePlanner.Plan(pool, RoomNeeded, _failedNodes, out var failure) is not null) return;
            if (failure is { MissingLayers.Count: > 0 }) throw new PoolUnavailableException(failure.Message, failure.MissingLayers);
            var waited = Stopwatch.GetElapsedTime(started);
            if (waited >= timeout)
                throw new PoolOutOfKvException(
                    $"The pool is at capacity: no chain of nodes freed room for this session's {RoomNeeded} KV positions within {timeout.TotalSeconds:F0} s; retry later");
            await Task.Delay(Min(delay, timeout - waited), ct);
            delay = Min(delay * 2, TimeSpan.FromSeconds(1));
        }
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    /// <summary>
    /// Failover: plans a route that keeps the broken route's surviving stages where it can, opens it with resume (stages
    /// that still hold the session truncate it to <paramref name="committed"/> positions; a replacement is rebuilt by
    /// its upstream stage from the outputs it kept), and rebuilds a replacement first stage from the token ids.
    /// </summary>
    private async Task ResumeAsync(int committed, CancellationToken ct)
    {
        var broken = _broken!;
        var started = Stopwatch.GetTimestamp();
        await ConnectAsync(broken, ct, new ResumePoint(committed, broken.Client.LastStepId));
        var route = _route!;
        _broken = null;
        // Stages of the old route that the new one does not use still hold the session: free it there.
        await CloseSessionOnAsync(broken.Plan.Hops, broken.DataSessionId, keep: route.Plan.Hops, waitForClose: false);
        var firstLength = route.Client.FirstStageLength;
        if (firstLength == 0 && committed > 0)
        {
            // The first stage is new: rebuild it from the token ids, in the steps that built the old one.
            await ReplayAsync(_stepEnds.Count - 1, rebuild: true, ct);
        }
        else if (firstLength != committed)
        {
            throw HopFailure.Exception(HopFailureReason.BadResult, $"the first stage resumed with {firstLength} positions, expected {committed}");
        }
        _service.Log.LogInformation("Session {Session}: resumed on {Route} at {Committed} positions in {Ms:F0} ms", _sessionId, route.Plan,
            committed, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
    }

    /// <summary>
    /// Rebuilds KV from the token ids with the same steps as the first time (the first <paramref name="steps"/> of
    /// them): the prompt in the same chunks, then one row per generated token. ggml's results depend on a step's row
    /// count (one batched prefill of prompt + generated tokens gave different logits than token-by-token decode, and
    /// the greedy text changed at the first token after a failover), so only the original step shapes reproduce the
    /// original KV and text exactly. With <paramref name="rebuild"/> the steps are unanswered rebuild steps.
    /// </summary>
    private async Task ReplayAsync(int steps, bool rebuild, CancellationToken ct)
    {
        var from = 0;
        for (var i = 0; i < steps; i++)
        {
            var end = _stepEnds[i];
            await PrefillAsync(from, end, ct, rebuild);
            from = end;
        }
    }

    private async Task PrefillAsync(int from, int to, CancellationToken ct, bool rebuild = false)
    {
        var head = _service.Model.Head;
        var width = head.Width;
        var chunk = Math.Max(1, _service.Options.PrefillChunkRows);
        var rented = ArrayPool<float>.Shared.Rent(Math.Min(chunk, to - from) * width);
        try
        {
            for (var at = from; at < to; at += chunk)
            {
                var rows = Math.Min(chunk, to - at);
                var hidden = rented.AsMemory(0, rows * width);
                StepTimeline.Mark(StepEvent.GatewayEmbedStart, 0);
                head.Embed(CollectionsMarshal.AsSpan(_fed).Slice(at, rows), hidden.Span);
                if (rebuild)
                {
                    await _route!.Client.RebuildAsync(hidden, rows, at, _service.Options.StepTimeout, ct);
                    continue;
                }
                var received = await StepAsync(hidden, rows, at, null, ct);
                if (received != 1) throw HopFailure.Exception(HopFailureReason.BadResult, $"route returned {received} rows for a last-row step");
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(rented);
        }
    }

    /// <summary>One last-row step through the open route; the row lands in <see cref="LastRow"/>. Returns rows received.</summary>
    private async Task<int> StepAsync(ReadOnlyMemory<float> hidden, int rows, int startPosition, int? truncateTo, CancellationToken ct)
    {
        var client = _route!.Client;
        var started = Stopwatch.GetTimestamp();
        StepTimeline.Mark(StepEvent.GatewaySend, client.LastStepId + 1);
        var result = await client.StepAsync(hidden, rows, startPosition, lastRowOnly: true, _lastRow, _service.Options.StepTimeout, truncateTo, ct);
        StepTimeline.Mark(StepEvent.GatewayReceived, result.StepId);
        _service.Telemetry.HopRoundTripMs.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        return result.RowCount;
    }

    private async Task ConnectAsync(OpenRoute? resuming, CancellationToken ct, ResumePoint? resume = null)
    {
        // Resuming: stages that hold the session already cost nothing to keep, so prefer them.
        var keep = resuming?.Plan.Hops;
        var (plan, failure) = PlanAndHold(_service.Pool.Current, keep);
        if (plan is null)
        {
            // The view may simply be stale (a node just joined or freed KV): look again before giving up.
            (plan, failure) = PlanAndHold(await _service.Pool.RefreshAsync(ct), keep);
        }
        if (plan is null) throw new PoolUnavailableException(failure!.Message, failure.MissingLayers);

        using var activity = GatewayTelemetry.Source.StartActivity("potluck.gateway.open_route");
        activity?.SetTag("potluck.session", _sessionId);
        activity?.SetTag("potluck.route", plan.ToString());
        // A resume keeps the session id the stages know; a fresh route gets a new one.
        var dataSession = resuming?.DataSessionId ?? (_routeGeneration == 0 ? _sessionId : $"{_sessionId}~{_routeGeneration}");
        _routeGeneration++;
        var hops = new RouteHop[plan.Hops.Count];
        for (var i = 0; i < hops.Length; i++)
            hops[i] = new RouteHop { NodeId = plan.Hops[i].NodeId, Endpoint = plan.Hops[i].Endpoint, LayerStart = plan.Hops[i].LayerStart, LayerEnd = plan.Hops[i].LayerEnd };
        // A fresh ticket for every open, resume and re-route: it names exactly this route, so a stage dials only its
        // next hop here, and only this gateway can allow a resume of this session id.
        var ticket = RouteTickets.Issue(_service.Authority, dataSession, hops, _sessionTokens, resume is not null, RouteTickets.DefaultLifetime);
        var open = HopFrames.Open(dataSession, _service.Model.ModelId, _sessionTokens, _service.Options.WireType, hops, ticket, resume);
        var client = await SessionHopClient.OpenAsync(_service.Channels.Get(plan.Hops[0].Endpoint, plan.Hops[0].NodeId).CreateCallInvoker(), open, _service.Model.Width,
            _service.Options.StepTimeout, ct);
        _route = new OpenRoute(client, plan, dataSession);
        State = RouteState.Open;
        var records = new RouteHopRecord[plan.Hops.Count];
        for (var i = 0; i < records.Length; i++)
            records[i] = new RouteHopRecord(plan.Hops[i].NodeId, plan.Hops[i].Endpoint, plan.Hops[i].LayerStart, plan.Hops[i].LayerEnd);
        await _grain.SetRoute(records, reroute: _routeGeneration > 1);
    }

    /// <summary>
    /// Plans a route and counts it in the gateway's live load at once, under one lock: requests arriving together
    /// then see each other's choices and spread over replicas. The previous route's count is released.
    /// </summary>
    private (RoutePlan? Plan, RouteFailure? Failure) PlanAndHold(PoolSnapshot pool, IReadOnlyList<StageCandidate>? keep)
    {
        lock (_service.Load)
        {
            var plan = RoutePlanner.Plan(pool, RoomNeeded, _failedNodes, out var failure, keep, _service.Load);
            if (plan is null) return (null, failure);
            _routeLease?.Dispose();
            _routeLease = _service.Load.Hold(plan);
            return (plan, null);
        }
    }

    /// <summary>Works out which stages to avoid next time, as the policy says: the one the failure names, those without KV room, those that do not answer.</summary>
    private async Task FindFailedStagesAsync(RoutePlan? failedPlan, HopFailure failure, FailoverDecision decision, CancellationToken ct)
    {
        var before = _failedNodes.Count;
        if (decision.AvoidFailingStage && failure.Stage is { } stage)
        {
            if (failure.Reason == HopFailureReason.KvFull) AvoidFull(stage.NodeId);
            else _failedNodes.Add(stage.NodeId);
        }
        var plan = failedPlan ?? RoutePlanner.Plan(_service.Pool.Current, RoomNeeded, _failedNodes, out _);
        if (plan is not null)
        {
            foreach (var hop in plan.Hops)
            {
                if (_failedNodes.Contains(hop.NodeId)) continue;
                if (decision.CheckFreeKv)
                {
                    try
                    {
                        var status = await _service.Grains.GetGrain<IShardGrain>(hop.ShardKey).GetStatus().WaitAsync(TimeSpan.FromSeconds(5), ct);
                        // The stage holds the session already: it needs room for the next block only.
                        if (status.FreeKvTokens < LayerSpan.KvBlockTokens) AvoidFull(hop.NodeId);
                    }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        _failedNodes.Add(hop.NodeId);
                    }
                }
                else if (decision.ProbeStages && !await _service.Pool.ProbeAsync(hop.Endpoint, hop.NodeId, ct))
                {
                    _failedNodes.Add(hop.NodeId);
                }
            }
        }
        // Nobody looks guilty (e.g. a stage restarted between probes): at least refresh the view.
        if (_failedNodes.Count == before) await _service.Pool.RefreshAsync(ct);
    }

    /// <summary>Rewinds every stage's KV to <paramref name="length"/> tokens (past a stop sequence) with a 0-row step.</summary>
    public async Task RewindAsync(int length, CancellationToken ct)
    {
        if (length >= _fed.Count) return;
        if (_route is not null)
        {
            try
            {
                await StepAsync(ReadOnlyMemory<float>.Empty, 0, length, length, ct);
            }
            catch (RpcException e) when (!ct.IsCancellationRequested)
            {
                // The text is complete and the session closes next, which frees the KV anyway: a stage failing
                // now must not turn a finished answer into an error.
                _service.Log.LogWarning("Session {Session}: rewinding past the stop sequence failed ({Status}: {Detail}); closing the route",
                    _sessionId, e.StatusCode, e.Status.Detail);
            }
        }
        _fed.RemoveRange(length, _fed.Count - length);
    }

    /// <summary>Normal end: closes the session on every stage (through the control plane when the stream is broken).</summary>
    public async Task CloseAsync()
    {
        if (_route is { } route)
        {
            try
            {
                await route.Client.CloseAsync(CloseTimeout);
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException)
            {
                _service.Log.LogDebug("Session {Session}: close did not complete cleanly: {Error}", _sessionId, e.Message);
                // A broken stream leaves the session detached on the stages: free it through the control plane.
                await CloseSessionOnAsync(route.Plan.Hops, route.DataSessionId, keep: null, waitForClose: false, cancelled: false);
            }
            await route.Client.DisposeAsync();
            _route = null;
        }
        State = RouteState.Closed;
    }

    /// <summary>Cancel or failure: frees the session on every stage of the open and the broken route. False when there was none.</summary>
    public async Task<bool> DropAsync()
    {
        var held = _route is not null || _broken is not null;
        await DropRouteAsync(cancelled: true);
        await AbandonBrokenRouteAsync(waitForClose: true);
        State = RouteState.Closed;
        return held;
    }

    /// <summary>Stops counting this route in the gateway's live load.</summary>
    public void ReleaseLoad() => _routeLease?.Dispose();

    /// <summary>
    /// Ends the route's streams and tells every stage to free the session at once (cancel, failure). With
    /// <paramref name="waitForClose"/> false the control-plane closes finish in the background.
    /// </summary>
    private async Task DropRouteAsync(bool cancelled, bool waitForClose = true)
    {
        if (_route is not { } route) return;
        _route = null;
        await route.Client.DisposeAsync();
        await CloseSessionOnAsync(route.Plan.Hops, route.DataSessionId, keep: null, waitForClose, cancelled);
    }

    /// <summary>Gives up resuming the broken route: frees the session on every stage of it that is still there.</summary>
    private async Task AbandonBrokenRouteAsync(bool waitForClose)
    {
        if (_broken is not { } broken) return;
        _broken = null;
        await CloseSessionOnAsync(broken.Plan.Hops, broken.DataSessionId, keep: null, waitForClose);
    }

    /// <summary>
    /// Frees <paramref name="dataSessionId"/> through the control plane on every hop except those in <paramref name="keep"/>
    /// (a detached session would otherwise wait out the stages' resume timeout). Dead stages' closes just fail.
    /// </summary>
    private async Task CloseSessionOnAsync(IReadOnlyList<StageCandidate> hops, string dataSessionId, IReadOnlyList<StageCandidate>? keep,
        bool waitForClose, bool cancelled = true)
    {
        var closes = new List<Task>(hops.Count);
        foreach (var hop in hops)
        {
            // A failed stage has nothing to free, and a grain call to a dead silo would wait out a timeout.
            if (_failedNodes.Contains(hop.NodeId) || (keep is not null && Contains(keep, hop))) continue;
            closes.Add(_service.Grains.GetGrain<IShardGrain>(hop.ShardKey).CloseSession(dataSessionId, cancelled));
        }
        if (closes.Count == 0) return;
        var closing = AwaitClosesAsync(Task.WhenAll(closes), dataSessionId);
        if (waitForClose) await closing;
    }

    private static bool Contains(IReadOnlyList<StageCandidate> hops, StageCandidate hop)
    {
        foreach (var h in hops)
            if (h.NodeId == hop.NodeId && h.LayerStart == hop.LayerStart && h.LayerEnd == hop.LayerEnd) return true;
        return false;
    }

    private async Task AwaitClosesAsync(Task closes, string dataSessionId)
    {
        try
        {
            await closes.WaitAsync(CloseTimeout);
        }
        catch (Exception e)
        {
            // The streams' end frees the KV anyway; this is only the faster path.
            _service.Log.LogDebug("Session {Session}: control-plane close incomplete: {Error}", dataSessionId, e.Message);
        }
    }

    /// <summary>One opened route: its stream to the first stage, its plan, and the session id its stages know.</summary>
    private sealed record OpenRoute(SessionHopClient Client, RoutePlan Plan, string DataSessionId);
}
