using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Potluck.Cluster;
using Potluck.Cluster.Directory;
using Potluck.Protocol;
using Potluck.Protocol.V1;
using Potluck.Gateway.Head;
using Potluck.Gateway.Telemetry;

namespace Potluck.Gateway.Routing;

/// <summary>
/// Keeps the gateway's pool view fresh: pulls the pool directory's shard list every period and probes each
/// stage's gRPC endpoint (Describe) for its hop latency and live KV room. Routing reads <see cref="Current"/>.
/// </summary>
public sealed class PoolMonitor(
    IGrainFactory grains,
    ISiloMetadataCache siloMetadata,
    IClusterMembershipService membership,
    MemberChannels channels,
    ModelFrontEnd model,
    GatewayTelemetry telemetry,
    GatewayOptions options,
    ILogger<PoolMonitor> log) : BackgroundService
{
    /// <summary>Silo metadata key a node may set to its OS process id (shown by /api/pool).</summary>
    public const string ProcessIdMetadataKey = NodeMetadataKeys.ProcessId;

    private static readonly TimeSpan ProbeTimeout = TimeSpan.FromSeconds(2);
    private readonly ConcurrentDictionary<string, byte> _mismatchWarned = new(StringComparer.Ordinal);
    private readonly TaskCompletionSource _firstRefresh = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile PoolSnapshot _current = PoolSnapshot.Empty(model.ModelId, model.LayerCount);
    private volatile PoolView _view = new([], DateTime.UtcNow);

    /// <summary>The latest pool view for this gateway's model.</summary>
    public PoolSnapshot Current => _current;

    /// <summary>The latest raw directory view (every model).</summary>
    public PoolView RawView => _view;

    /// <summary>Refreshes now (routing calls this after a refusal so the next plan sees fresh KV numbers).</summary>
    public async Task<PoolSnapshot> RefreshAsync(CancellationToken ct)
    {
        var view = await grains.GetGrain<IPoolDirectoryGrain>(PoolKeys.Default).GetView().WaitAsync(ProbeTimeout * 2, ct);
        view = WithoutMalformed(CarryOverRestart(view));
        _view = view;
        var stages = new List<StageCandidate>(view.Shards.Count);
        var probes = new List<Task>();
        foreach (var shard in view.Shards)
        {
            var s = shard.Status;
            if (s.ModelId != model.ModelId) continue;
            if (!_hopSamples.ContainsKey(s.GrpcEndpoint)) probes.Add(ProbeAsync(s.GrpcEndpoint, s.NodeId, ct));
        }
        if (probes.Count > 0) await Task.WhenAll(probes);
        foreach (var shard in view.Shards)
        {
            var s = shard.Status;
            if (s.ModelId != model.ModelId) continue;
            stages.Add(new StageCandidate(s.NodeId, s.GrpcEndpoint, s.LayerStart, s.LayerEnd, shard.Healthy && !s.Draining, shard.Problem,
                s.OpenSessions, s.FreeKvTokens, s.KvBudgetTokens, s.MeasuredMsPerToken,
                _hopSamples.TryGetValue(s.GrpcEndpoint, out var hop) ? hop.Estimate : double.NaN, s.StepsPerSecond, ProcessIdOf(s.SiloAddress)));
        }
        var snapshot = new PoolSnapshot(model.ModelId, model.LayerCount, stages, view.AsOfUtc) { MismatchedNodes = FindMismatched(view) };
        _current = snapshot;
        _firstRefresh.TrySetResult();
        return snapshot;
    }

    /// <summary>
    /// The pool directory is soft state in one grain activation. When that activation is new (the silo hosting it
    /// died), it knows only the nodes that reported since, and for a report period the pool would look emptier than
    /// it is: routes would fail and joining nodes would pick spans that are held. For <see cref="RefillWindow"/>
    /// after a restart, shards of the previous view that the new one lacks are kept, unless their silo is no longer
    /// an active member.
    /// </summary>
    private PoolView CarryOverRestart(PoolView view)
    {
        var previous = _view;
        var now = DateTime.UtcNow;
        if (previous.DirectoryEpoch != view.DirectoryEpoch)
        {
            if (previous.DirectoryEpoch != default)
            {
                _carried = previous;
                _carriedUntil = now + RefillWindow;
                log.LogWarning("The pool directory restarted (its silo left); keeping the previous view of {Shards} shards for {Seconds:F0} s while nodes report again",
                    previous.Shards.Count, RefillWindow.TotalSeconds);
            }
        }
        if (_carried is not { } carried || now > _carriedUntil) return view;
        var active = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (address, member) in membership.CurrentSnapshot.Members)
            if (member.Status == SiloStatus.Active) active.Add(address.ToParsableString());
        var present = new HashSet<string>(StringComparer.Ordinal);
        foreach (var shard in view.Shards) present.Add(shard.Status.ShardKey);
        List<PoolShard>? merged = null;
        foreach (var shard in carried.Shards)
        {
            if (present.Contains(shard.Status.ShardKey) || !active.Contains(shard.Status.SiloAddress)) continue;
            (merged ??= new List<PoolShard>(view.Shards)).Add(shard);
        }
        return merged is null ? view : view with { Shards = merged };
    }

    /// <summary>
    /// The view without entries that fail <see cref="ShardValidation"/> (an older directory, or one that did not
    /// check): one bad endpoint must cost that entry only, never the whole refresh. Each is logged once.
    /// </summary>
    private PoolView WithoutMalformed(PoolView view)
    {
        List<PoolShard>? kept = null;
        for (var i = 0; i < view.Shards.Count; i++)
        {
            var shard = view.Shards[i];
            var problem = shard?.Status is null ? "empty entry" : ShardValidation.Problem(shard.Status);
            if (problem is null)
            {
                kept?.Add(shard!);
                continue;
            }
            kept ??= new List<PoolShard>(view.Shards.Take(i));
            var key = shard?.Status is { } st ? $"{st.NodeId?.Length}:{st.LayerStart}-{st.LayerEnd}:{problem}" : problem;
            if (_malformedWarned.Count < 1024 && _malformedWarned.TryAdd(key, 0))
                log.LogWarning("Ignoring a malformed shard entry in the pool directory: {Problem}", problem);
        }
        return kept is null ? view : view with { Shards = kept };
    }

    private readonly ConcurrentDictionary<string, byte> _malformedWarned = new(StringComparer.Ordinal);

    /// <summary>How long shards of a restarted directory's previous view are kept (a few report periods).</summary>
    public static readonly TimeSpan RefillWindow = TimeSpan.FromSeconds(10);

    private PoolView? _carried;
    private DateTime _carriedUntil;

    /// <summary>
    /// Nodes serving another model (another file): from the directory (they report shards) and from silo
    /// metadata (a node refusing to join shows there until it leaves). Never routed to; warned about once per node.
    /// </summary>
    private IReadOnlyList<MismatchedNode> FindMismatched(PoolView view)
    {
        List<MismatchedNode>? found = null;
        foreach (var shard in view.Shards)
        {
            var s = shard.Status;
            if (s.ModelId != model.ModelId)
                (found ??= []).Add(new MismatchedNode(s.NodeId, s.GrpcEndpoint, s.LayerStart, s.LayerEnd, s.ModelId, ProcessIdOf(s.SiloAddress)));
        }
        foreach (var (address, member) in membership.CurrentSnapshot.Members)
        {
            if (member.Status != SiloStatus.Active) continue;
            var values = siloMetadata.GetSiloMetadata(address).Metadata;
            if (!values.TryGetValue(NodeMetadataKeys.Role, out var role) || role != "node") continue;
            if (!values.TryGetValue(NodeMetadataKeys.ModelId, out var modelId) || modelId == model.ModelId) continue;
            var nodeId = values.TryGetValue(NodeMetadataKeys.NodeId, out var id) ? id : address.ToString();
            if (found is not null && found.Exists(n => n.NodeId == nodeId)) continue;
            var (start, end) = values.TryGetValue(NodeMetadataKeys.Layers, out var layers) ? ParseLayers(layers) : (0, 0);
            (found ??= []).Add(new MismatchedNode(nodeId, values.TryGetValue(NodeMetadataKeys.GrpcEndpoint, out var grpc) ? grpc : "",
                start, end, modelId, ProcessIdOf(address.ToParsableString())));
        }
        if (found is null) return [];
        foreach (var node in found)
        {
            if (_mismatchWarned.TryAdd(node.NodeId, 0))
                log.LogWarning("Node {NodeId} at {Endpoint} serves model {NodeModelId}, but this gateway serves {ModelId} ({ModelName}); " +
                    "it is never routed to. Start it with the gateway's model file", node.NodeId, node.Endpoint, node.ModelId, model.ModelId, model.Name);
        }
        return found;
    }

    private static (int Start, int End) ParseLayers(string text)
    {
        var dash = text.IndexOf('-');
        return dash > 0 && int.TryParse(text.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out var start)
            && int.TryParse(text.AsSpan(dash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var end) ? (start, end) : (0, 0);
    }

    /// <summary>Waits until the first refresh finished (or the timeout passed).</summary>
    public Task WaitForFirstRefreshAsync(TimeSpan timeout, CancellationToken ct) =>
        _firstRefresh.Task.WaitAsync(timeout, ct).ContinueWith(static _ => { }, TaskScheduler.Default);

    private int? ProcessIdOf(string siloAddress)
    {
        try
        {
            var metadata = siloMetadata.GetSiloMetadata(SiloAddress.FromParsableString(siloAddress)).Metadata;
            return metadata.TryGetValue(ProcessIdMetadataKey, out var pid) && int.TryParse(pid, NumberStyles.None, CultureInfo.InvariantCulture, out var id)
                ? id : null;
        }
        catch (Exception e) when (e is FormatException or ArgumentException or KeyNotFoundException)
        {
            return null;
        }
    }

    /// <summary>
    /// Measures Describe round trips to a stage: the hop latency the planner charges for entering it. The estimate
    /// is the fastest of the last <see cref="HopWindow"/> probes: a round trip is never faster than the hop, while a
    /// busy 2-core machine made single probes (and an average of them) 10-100x slower than the hop.
    /// </summary>
    public async Task<bool> ProbeAsync(string endpoint, string nodeId, CancellationToken ct)
    {
        try
        {
            var client = new Stage.StageClient(channels.Get(endpoint, nodeId));
            var fresh = !_hopSamples.ContainsKey(endpoint);
            // The first call on a new channel pays for the connection (and JIT): measured up to 0.6 s, not a hop.
            if (fresh) await client.DescribeAsync(new DescribeRequest(), deadline: DateTime.UtcNow + ProbeTimeout, cancellationToken: ct);
            var samples = _hopSamples.GetOrAdd(endpoint, static _ => new HopSamples());
            for (var i = fresh ? 3 : 1; i > 0; i--)
            {
                var started = Stopwatch.GetTimestamp();
                await client.DescribeAsync(new DescribeRequest(), deadline: DateTime.UtcNow + ProbeTimeout, cancellationToken: ct);
                var ms = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                samples.Add(ms);
                telemetry.HopLatencyMs.Record(ms, new KeyValuePair<string, object?>("endpoint", endpoint));
            }
            return true;
        }
        catch (RpcException e)
        {
            log.LogDebug("Probe of {Endpoint} failed: {Status}", endpoint, e.Status);
            _hopSamples.TryRemove(endpoint, out _);
            return false;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // A channel that cannot even be built (bad address) fails this stage's probe, never the whole refresh.
            log.LogDebug("Probe of {Endpoint} failed: {Error}", endpoint, e.Message);
            _hopSamples.TryRemove(endpoint, out _);
            return false;
        }
    }

    /// <summary>Probes kept per stage for its hop estimate.</summary>
    public const int HopWindow = 8;

    private readonly ConcurrentDictionary<string, HopSamples> _hopSamples = new(StringComparer.Ordinal);

    /// <summary>The last <see cref="HopWindow"/> round trips to one stage; the estimate is their minimum.</summary>
    private sealed class HopSamples
    {
        private readonly double[] _ring = new double[HopWindow];
        private int _count;
        private int _next;

        public void Add(double ms)
        {
            lock (_ring)
            {
                _ring[_next] = ms;
                _next = (_next + 1) % _ring.Length;
                if (_count < _ring.Length) _count++;
            }
        }

        /// <summary>The fastest kept round trip; NaN before the first.</summary>
        public double Estimate
        {
            get
            {
                lock (_ring)
                {
                    if (_count == 0) return double.NaN;
                    var min = double.PositiveInfinity;
                    for (var i = 0; i < _count; i++) min = Math.Min(min, _ring[i]);
                    return min;
                }
            }
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var round = 0;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                // Re-probe latencies every few rounds; new endpoints are probed as soon as they appear.
                if (++round % 5 == 0)
                {
                    var endpoints = new List<Task>();
                    foreach (var stage in _current.Stages) endpoints.Add(ProbeAsync(stage.Endpoint, stage.NodeId, stoppingToken));
                    await Task.WhenAll(endpoints);
                }
                await RefreshAsync(stoppingToken);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                log.LogDebug(e, "Pool view refresh failed");
            }
            try
            {
                await Task.Delay(options.PoolRefreshPeriod, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }
}
