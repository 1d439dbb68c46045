using Potluck.Gateway.Routing;

namespace Potluck.Gateway.Telemetry;

/// <summary>Something that happened to a stage of the pool, as the gateway saw it.</summary>
/// <param name="Kind">joined, failed, recovered, draining, drained, left, moved or removed.</param>
public sealed record PoolEvent(DateTime TimeUtc, string Kind, string NodeId, int LayerStart, int LayerEnd, string Detail);

/// <summary>A stage that left the pool view recently: kept so the dashboard still shows it (red when it failed).</summary>
/// <param name="State">"failed" (gone without draining) or "left" (drained or withdrew).</param>
public sealed record DepartedNode(string NodeId, string Endpoint, int LayerStart, int LayerEnd, string State, string Detail, DateTime SinceUtc, int? ProcessId);

/// <summary>
/// Recent pool events from successive pool views: a stage that appears joined; one whose health changes failed,
/// recovered or is draining; one that disappears drained (it was draining), left (its silo was still active or
/// shutting down: it withdrew), moved (the same node holds another span now) or failed (its silo was declared dead
/// without a graceful leave; the directory drops a dead silo's shards). Thread-safe; fed once a second by
/// <see cref="DashboardSampler"/>.
/// </summary>
public sealed class PoolEvents
{
    public const int MaxEvents = 200;

    /// <summary>How long a departed stage stays on the dashboard.</summary>
    public static readonly TimeSpan KeepDeparted = TimeSpan.FromMinutes(10);

    private const string Healthy = "healthy";
    private const string Draining = "draining";
    private const string Unhealthy = "unhealthy";

    private readonly Lock _gate = new();
    private readonly Dictionary<string, Known> _known = new(StringComparer.Ordinal);
    private readonly Dictionary<string, DepartedNode> _departed = new(StringComparer.Ordinal);
    private readonly LinkedList<PoolEvent> _events = new();
    // Silos seen shutting down or stopping (a graceful stop), kept until their stage is gone.
    private readonly HashSet<string> _leavingSilos = new(StringComparer.Ordinal);

    private sealed record Known(StageCandidate Stage, string State, string? Silo);

    /// <summary>The latest events, newest first.</summary>
    public IReadOnlyList<PoolEvent> Events
    {
        get
        {
            lock (_gate) return [.. _events];
        }
    }

    /// <summary>Stages that left within <see cref="KeepDeparted"/>, most recent first.</summary>
    public IReadOnlyList<DepartedNode> Departed
    {
        get
        {
            lock (_gate) return [.. _departed.Values.OrderByDescending(d => d.SinceUtc)];
        }
    }

    /// <summary>The state the dashboard shows for a stage: healthy, draining or unhealthy.</summary>
    public static string StateOf(StageCandidate stage) =>
        stage.Healthy ? Healthy : stage.Problem == Draining ? Draining : Unhealthy;

    /// <param name="stages">This gateway's model's stages now.</param>
    /// <param name="siloOfShard">Each stage's silo address (parsable form) by shard key, from the directory's view.</param>
    /// <param name="members">Cluster membership now: silo status by address (parsable form).</param>
    public void Observe(IReadOnlyList<StageCandidate> stages, IReadOnlyDictionary<string, string> siloOfShard,
        IReadOnlyDictionary<string, SiloStatus> members, DateTime nowUtc)
    {
        lock (_gate)
        {
            foreach (var (address, status) in members)
                if (status is SiloStatus.ShuttingDown or SiloStatus.Stopping) _leavingSilos.Add(address);

            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var stage in stages)
            {
                var key = stage.ShardKey;
                if (!seen.Add(key)) continue;
                var state = StateOf(stage);
                var silo = siloOfShard.GetValueOrDefault(key);
                if (!_known.TryGetValue(key, out var prior))
                {
                    Add(nowUtc, "joined", stage, "");
                    foreach (var gone in _departed.Where(d => d.Value.NodeId == stage.NodeId).Select(d => d.Key).ToList()) _departed.Remove(gone);
                    if (state != Healthy) Add(nowUtc, state == Draining ? "draining" : "failed", stage, stage.Problem ?? "");
                }
                else if (prior.State != state)
                {
                    Add(nowUtc, state switch { Healthy => "recovered", Draining => "draining", _ => "failed" }, stage, stage.Problem ?? "");
                }
                _known[key] = new Known(stage, state, silo ?? prior?.Silo);
            }

            foreach (var key in _known.Keys.Where(k => !seen.Contains(k)).ToList())
            {
                var prior = _known[key];
                _known.Remove(key);
                var stage = prior.Stage;
                var siloStatus = prior.Silo is { } s && members.TryGetValue(s, out var st) ? st : (SiloStatus?)null;
                var graceful = prior.State == Draining || (prior.Silo is { } leaving && _leavingSilos.Contains(leaving)) || siloStatus == SiloStatus.Active;
                var now = stages.FirstOrDefault(c => c.NodeId == stage.NodeId);
                if (graceful && now is not null)
                {
                    Add(nowUtc, "moved", stage, $"now holds [{now.LayerStart}, {now.LayerEnd})");
                    continue;
                }
                string kind, detail;
                if (graceful)
                {
                    kind = prior.State == Draining ? "drained" : "left";
                    detail = prior.State == Draining ? "drained and left the pool" : "withdrew from the pool";
                }
                else
                {
                    kind = prior.State == Unhealthy ? "removed" : "failed";
                    detail = siloStatus is { } known ? $"gone without draining (silo {known.ToString().ToLowerInvariant()})" : "gone without draining";
                }
                Add(nowUtc, kind, stage, detail);
                _departed[key] = new DepartedNode(stage.NodeId, stage.Endpoint, stage.LayerStart, stage.LayerEnd,
                    graceful ? "left" : "failed", detail, nowUtc, stage.ProcessId);
            }

            foreach (var key in _departed.Where(d => nowUtc - d.Value.SinceUtc > KeepDeparted).Select(d => d.Key).ToList()) _departed.Remove(key);
            var silosInUse = new HashSet<string>(_known.Values.Select(k => k.Silo).OfType<string>(), StringComparer.Ordinal);
            _leavingSilos.RemoveWhere(silo => !silosInUse.Contains(silo) && !members.ContainsKey(silo));
        }
    }

    private void Add(DateTime time, string kind, StageCandidate stage, string detail)
    {
        _events.AddFirst(new PoolEvent(time, kind, stage.NodeId, stage.LayerStart, stage.LayerEnd, detail));
        while (_events.Count > MaxEvents) _events.RemoveLast();
    }
}
