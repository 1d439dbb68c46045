using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Potluck.Cluster;
using Potluck.Protocol.Diagnostics;
using Potluck.Gateway.Head;
using Potluck.Gateway.Routing;
using Potluck.Gateway.Sessions;
using Potluck.Gateway.Telemetry;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Generation;

/// <summary>
/// One request's generation: plans and opens a route, prefills the prompt, then samples token by token with the
/// head in this process and the layers on the nodes. When a stage fails, the route is re-planned around it and
/// resumed: surviving stages keep their KV, and a replacement rebuilds its span from what its upstream stage kept
/// (or from the token ids when it is the first stage), so the text continues unchanged. When resuming is not
/// possible, the whole route is replaced and replayed from the token ids. Not thread-safe; one consumer.
/// </summary>
public sealed class Generation : IAsyncDisposable
{
    private const int MaxRouteAttempts = 4;
    private const int AppendBatch = 32;
    private static readonly TimeSpan CloseTimeout = TimeSpan.FromSeconds(5);

    private readonly GenerationService _service;
    private readonly GenerationRequest _request;
    private readonly ISessionGrain _grain;
    private readonly Sampler _sampler;
    private readonly StreamingDecoder _decoder;
    private readonly StopSequenceMatcher _stops;
    private readonly float[] _logits;
    private readonly float[] _lastRow;
    private readonly List<int> _fed;
    // _fed length after each EvaluateAsync call: a replay repeats exactly these steps (see ReplayAsync).
    private readonly List<int> _stepEnds;
    private readonly List<int> _unrecorded = new(AppendBatch);
    // Cumulative output chars after each generated token: maps a stop offset back to a KV length.
    private readonly List<int> _textEnds = [];
    private readonly HashSet<string> _failedNodes = new(StringComparer.Ordinal);
    private RouteConnection? _route;
    // The broken route a failover resumes: its plan, session id and last answered step.
    private RouteConnection? _broken;
    // Counts the current route's stages in the gateway's live load while this generation holds it.
    private IDisposable? _routeLease;
    private int _routeGeneration;
    private int _textLength;
    private bool _released;
    private long _startedTimestamp;

    internal Generation(GenerationService service, GenerationRequest request, string sessionId, ISessionGrain grain)
    {
        _service = service;
        _request = request;
        SessionId = sessionId;
        _grain = grain;
        var model = service.Model;
        _sampler = new Sampler(request.Sampling, model.VocabSize);
        _decoder = model.Tokenizer.CreateStreamingDecoder();
        _stops = new StopSequenceMatcher(request.Stop);
        _logits = new float[model.VocabSize];
        _lastRow = new float[model.Width];
        _fed = new List<int>(request.PromptTokens.Length + request.MaxTokens);
        _stepEnds = new List<int>(request.MaxTokens + 1);
    }

    public string SessionId { get; }
    public int PromptTokens => _request.PromptTokens.Length;
    public int CompletionTokens { get; private set; }
    public FinishReason? Finish { get; private set; }
    public RoutePlan? Route => _route?.Plan;
    public int Reroutes { get; private set; }

    private int SessionTokens => _request.PromptTokens.Length + _request.MaxTokens;

    /// <summary>Plans and opens the route and prefills the prompt; errors here are still plain HTTP errors.</summary>
    public async Task PrepareAsync(CancellationToken ct)
    {
        _startedTimestamp = Stopwatch.GetTimestamp();
        await _grain.Begin(new SessionStart(_service.Model.Name, _request.Endpoint, _request.PromptTokens, _request.MaxTokens,
            _request.Sampling.Temperature, _request.Sampling.TopP, _request.Sampling.TopK, _request.Sampling.MinP,
            _request.Sampling.PresencePenalty, _request.Sampling.FrequencyPenalty, _request.Sampling.Seed, _request.User, DateTime.UtcNow));
        await EvaluateAsync(_request.PromptTokens, ct);
        _service.Telemetry.PromptTokens.Add(_request.PromptTokens.Length);
    }

    /// <summary>Generates until a stop condition; yields text pieces as they become safe to show.</summary>
    public async IAsyncEnumerable<string> RunAsync([EnumeratorCancellation] CancellationToken ct)
    {
        var tokenizer = _service.Model.Tokenizer;
        var telemetry = _service.Telemetry;
        var last = Stopwatch.GetTimestamp();
        int[] one = [0];
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            var token = _sampler.SampleAndAccept(_logits);
            StepTimeline.Mark(StepEvent.GatewaySampled, 0);
            CompletionTokens++;
            _unrecorded.Add(token);
            var now = Stopwatch.GetTimestamp();
            if (CompletionTokens == 1) telemetry.TimeToFirstTokenMs.Record(Stopwatch.GetElapsedTime(_startedTimestamp, now).TotalMilliseconds);
            else telemetry.InterTokenMs.Record(Stopwatch.GetElapsedTime(last, now).TotalMilliseconds);
            last = now;
            telemetry.CompletionTokens.Add(1);

            if (!_request.IgnoreEos && tokenizer.IsEndOfGeneration(token))
            {
                _textEnds.Add(_textLength);
                Finish = FinishReason.Stop;
                var rest = _stops.Flush();
                if (rest.Length > 0) yield return rest;
                break;
            }
            var piece = _decoder.Add(token);
            _textLength += piece.Length;
            _textEnds.Add(_textLength);
            var visible = piece.Length == 0 ? piece : _stops.Add(piece);
            if (visible.Length > 0) yield return visible;
            if (_stops.StopOffset is not null)
            {
                Finish = FinishReason.Stop;
                break;
            }
            if (CompletionTokens >= _request.MaxTokens)
            {
                Finish = FinishReason.Length;
                var rest = _stops.Flush();
                if (rest.Length > 0) yield return rest;
                break;
            }
            if (_unrecorded.Count >= AppendBatch) await FlushTokensAsync();
            one[0] = token;
            await EvaluateAsync(one, ct);
        }
        await CompleteAsync(ct);
    }

    /// <summary>Feeds <paramref name="tokens"/> after everything fed so far and leaves the next token's logits in _logits.</summary>
    private async Task EvaluateAsync(int[] tokens, CancellationToken ct)
    {
        var start = _fed.Count;
        _fed.AddRange(tokens);
        _stepEnds.Add(_fed.Count);
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                if (_route is null && _broken is not null)
                {
                    await ResumeAsync(start, ct);
                    await PrefillAsync(start, _fed.Count, ct);
                }
                else if (_route is null)
                {
                    await ConnectAsync(null, ct);
                    // A fresh route has no KV: replay everything fed so far, including these tokens.
                    await ReplayAsync(_stepEnds.Count, rebuild: false, ct);
                }
                else
                {
                    await PrefillAsync(start, _fed.Count, ct);
                }
                _service.Model.Head.Logits(_lastRow, 1, _logits);
                StepTimeline.Mark(StepEvent.GatewayLogitsDone, 0);
                return;
            }
            catch (RpcException e) when (!ct.IsCancellationRequested && e.StatusCode == StatusCode.FailedPrecondition && _broken is not null
                && attempt < MaxRouteAttempts)
            {
                // A stage could not rebuild its replacement (its kept outputs were dropped): replace the whole route.
                _service.Log.LogWarning("Session {Session}: cannot resume route {Route} ({Detail}); replaying the whole route", SessionId,
                    _broken.Plan, e.Status.Detail);
                await AbandonBrokenRouteAsync(waitForClose: false);
                await DropRouteAsync(cancelled: true, waitForClose: false);
            }
            catch (RpcException e) when (!ct.IsCancellationRequested && IsRouteFailure(e.StatusCode) && attempt < MaxRouteAttempts)
            {
                var failed = _route ?? _broken;
                _service.Log.LogWarning("Session {Session}: route {Route} failed ({Status}: {Detail}); re-planning", SessionId,
                    failed?.Plan.ToString() ?? "(opening)", e.StatusCode, e.Status.Detail);
                await FindFailedStagesAsync(failed?.Plan, e, ct);
                if (_route is { } route)
                {
                    // Ending our stream detaches the session on every stage: they keep its KV for the resume.
                    _route = null;
                    await route.DisposeAsync();
                    _broken = route;
                }
                Reroutes++;
                _service.Telemetry.Reroutes.Add(1);
            }
            catch (RpcException e) when (!ct.IsCancellationRequested)
            {
                await AbandonBrokenRouteAsync(waitForClose: true);
                throw new RouteFailedException($"the route failed: {e.Status.StatusCode}: {e.Status.Detail}", e);
            }
            catch (PoolUnavailableException) when (_broken is not null)
            {
                // No replica for the failed span: free the session's KV on the stages that survived before reporting it.
                await AbandonBrokenRouteAsync(waitForClose: true);
                throw;
            }
        }
    }

    /// <summary>
    /// Failover: plans a route that keeps the broken route's surviving stages where it can, opens it with resume (stages
    /// that still hold the session truncate it to <paramref name="committed"/> positions; a replacement is rebuilt by
    /// its upstream stage from the outputs it kept), and rebuilds a replacement first stage from the token ids.
    /// </summary>
    private async Task ResumeAsync(int committed, CancellationToken ct)
    {
        var broken = _broken!;
        var started = Stopwatch.GetTimestamp();
        await ConnectAsync(broken, ct, (committed, broken.LastAnsweredStepId));
        var route = _route!;
        _broken = null;
        // Stages of the old route that the new one does not use still hold the session: free it there.
        await CloseSessionOnAsync(broken.Plan.Hops, broken.DataSessionId, keep: route.Plan.Hops, waitForClose: false);
        var firstLength = route.FirstStageLength;
        if (firstLength == 0 && committed > 0)
        {
            // The first stage is new: rebuild it from the token ids, in the steps that built the old one.
            await ReplayAsync(_stepEnds.Count - 1, rebuild: true, ct);
        }
        else if (firstLength != committed)
        {
            throw new RpcException(new Status(StatusCode.Internal, $"the first stage resumed with {firstLength} positions, expected {committed}"));
        }
        _service.Log.LogInformation("Session {Session}: resumed on {Route} at {Committed} positions in {Ms:F0} ms", SessionId, route.Plan,
            committed, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
    }

    private static bool IsRouteFailure(StatusCode code) => code is StatusCode.Unavailable or StatusCode.Aborted or StatusCode.Internal
        or StatusCode.DeadlineExceeded or StatusCode.Cancelled or StatusCode.Unknown or StatusCode.ResourceExhausted or StatusCode.NotFound;

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
                head.Embed(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_fed).Slice(at, rows), hidden.Span);
                if (rebuild)
                {
                    await _route!.RebuildAsync(hidden, rows, at, _service.Options.StepTimeout, ct);
                    continue;
                }
                var received = await _route!.StepAsync(hidden, rows, at, null, _lastRow, _service.Options.StepTimeout, ct);
                if (received != 1) throw new RpcException(new Status(StatusCode.Internal, $"route returned {received} rows for a last-row step"));
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(rented);
        }
    }

    private async Task ConnectAsync(RouteConnection? resuming, CancellationToken ct, (int Length, ulong LastStepId)? resume = null)
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
        activity?.SetTag("potluck.session", SessionId);
        activity?.SetTag("potluck.route", plan.ToString());
        // A resume keeps the session id the stages know; a fresh route gets a new one.
        var dataSession = resuming?.DataSessionId ?? (_routeGeneration == 0 ? SessionId : $"{SessionId}~{_routeGeneration}");
        _routeGeneration++;
        _route = await RouteConnection.OpenAsync(_service.Channels, plan, dataSession, _service.Model.ModelId, SessionTokens,
            _service.Model.Width, _service.Options.WireType, _service.Options.StepTimeout, _service.Telemetry, ct, resume);
        var hops = new RouteHopRecord[plan.Hops.Count];
        for (var i = 0; i < hops.Length; i++)
            hops[i] = new RouteHopRecord(plan.Hops[i].NodeId, plan.Hops[i].Endpoint, plan.Hops[i].LayerStart, plan.Hops[i].LayerEnd);
        await _grain.SetRoute(hops, reroute: _routeGeneration > 1);
    }

    /// <summary>
    /// Plans a route and counts it in the gateway's live load at once, under one lock: requests arriving together
    /// then see each other's choices and spread over replicas. The previous route's count is released.
    /// </summary>
    private (RoutePlan? Plan, RouteFailure? Failure) PlanAndHold(PoolSnapshot pool, IReadOnlyList<StageCandidate>? keep)
    {
        lock (_service.Load)
        {
            var plan = RoutePlanner.Plan(pool, SessionTokens, _failedNodes, out var failure, keep, _service.Load);
            if (plan is null) return (null, failure);
            _routeLease?.Dispose();
            _routeLease = _service.Load.Hold(plan);
            return (plan, null);
        }
    }

    /// <summary>Works out which stages to avoid next time: those without KV room now, or that do not answer.</summary>
    private async Task FindFailedStagesAsync(RoutePlan? failedPlan, RpcException error, CancellationToken ct)
    {
        var plan = failedPlan ?? RoutePlanner.Plan(_service.Pool.Current, SessionTokens, _failedNodes, out _);
        if (plan is null) return;
        var before = _failedNodes.Count;
        foreach (var hop in plan.Hops)
        {
            if (error.StatusCode == StatusCode.ResourceExhausted)
            {
                try
                {
                    var status = await _service.Grains.GetGrain<IShardGrain>(hop.ShardKey).GetStatus().WaitAsync(TimeSpan.FromSeconds(5), ct);
                    if (status.FreeKvTokens < SessionTokens) _failedNodes.Add(hop.NodeId);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    _failedNodes.Add(hop.NodeId);
                }
            }
            else if (!await _service.Pool.ProbeAsync(hop.Endpoint, ct))
            {
                _failedNodes.Add(hop.NodeId);
            }
        }
        // Nobody looks guilty (e.g. a stage restarted between probes): at least refresh the view.
        if (_failedNodes.Count == before) await _service.Pool.RefreshAsync(ct);
    }

    private async Task FlushTokensAsync()
    {
        if (_unrecorded.Count == 0) return;
        var batch = _unrecorded.ToArray();
        _unrecorded.Clear();
        await _grain.Append(batch);
    }

    /// <summary>Normal end: rewinds the KV past a stop sequence, closes the session on every stage, records the outcome.</summary>
    private async Task CompleteAsync(CancellationToken ct)
    {
        await FlushTokensAsync();
        var kvLength = _fed.Count;
        if (_stops.StopOffset is { } stopAt && _route is not null)
        {
            // Keep only tokens whose text ends before the stop sequence began.
            var kept = 0;
            while (kept < _textEnds.Count && _textEnds[kept] <= stopAt) kept++;
            var keepLength = Math.Min(_fed.Count, _request.PromptTokens.Length + kept);
            if (keepLength < _fed.Count)
            {
                try
                {
                    // A 0-row step with truncate_to rewinds every stage's KV to the kept tokens.
                    await _route.StepAsync(ReadOnlyMemory<float>.Empty, 0, keepLength, keepLength, _lastRow, _service.Options.StepTimeout, ct);
                }
                catch (RpcException e) when (!ct.IsCancellationRequested)
                {
                    // The text is complete and the session closes next, which frees the KV anyway: a stage failing
                    // now must not turn a finished answer into an error.
                    _service.Log.LogWarning("Session {Session}: rewinding past the stop sequence failed ({Status}: {Detail}); closing the route",
                        SessionId, e.StatusCode, e.Status.Detail);
                }
                _fed.RemoveRange(keepLength, _fed.Count - keepLength);
                kvLength = keepLength;
            }
        }
        if (_route is not null)
        {
            try
            {
                await _route.CloseAsync(CloseTimeout);
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException)
            {
                _service.Log.LogDebug("Session {Session}: close did not complete cleanly: {Error}", SessionId, e.Message);
                // A broken stream leaves the session detached on the stages: free it through the control plane.
                await CloseSessionOnAsync(_route.Plan.Hops, _route.DataSessionId, keep: null, waitForClose: false, cancelled: false);
            }
            await _route.DisposeAsync();
            _route = null;
        }
        await _grain.Finish("finished", Finish == FinishReason.Length ? "length" : "stop", kvLength);
    }

    /// <summary>
    /// Ends the route's streams and tells every stage to free the session at once (cancel, failure). With
    /// <paramref name="waitForClose"/> false the control-plane closes finish in the background.
    /// </summary>
    private async Task DropRouteAsync(bool cancelled, bool waitForClose = true)
    {
        if (_route is not { } route) return;
        _route = null;
        await route.DisposeAsync();
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

    public async ValueTask DisposeAsync()
    {
        if (_released) return;
        _released = true;
        try
        {
            if (_route is not null || _broken is not null)
            {
                await DropRouteAsync(cancelled: true);
                await AbandonBrokenRouteAsync(waitForClose: true);
                await _grain.Finish("cancelled", null, 0);
            }
            else if (Finish is null)
            {
                await _grain.Finish("failed", null, 0);
            }
        }
        catch (Exception e)
        {
            _service.Log.LogDebug("Session {Session}: cleanup error: {Error}", SessionId, e.Message);
        }
        finally
        {
            _routeLease?.Dispose();
            _sampler.Dispose();
            _service.Release(this);
        }
    }
}
