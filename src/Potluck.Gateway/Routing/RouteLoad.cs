using System.Collections.Concurrent;

namespace Potluck.Gateway.Routing;

/// <summary>
/// Sessions this gateway has open on each stage right now. Nodes report their open sessions every couple of
/// seconds, so requests that arrive together would all see the same (stale) load and pile onto one replica; the
/// planner takes the larger of the reported count and this live one.
/// </summary>
public sealed class RouteLoad
{
    private readonly ConcurrentDictionary<string, int> _sessions = new(StringComparer.Ordinal);

    public int SessionsOn(string shardKey) => _sessions.TryGetValue(shardKey, out var count) ? count : 0;

    /// <summary>Counts a route's stages until the returned lease is disposed.</summary>
    public IDisposable Hold(RoutePlan plan) => new Lease(this, plan);

    private void Add(RoutePlan plan, int delta)
    {
        foreach (var hop in plan.Hops)
        {
            var updated = _sessions.AddOrUpdate(hop.ShardKey, Math.Max(0, delta), (_, count) => Math.Max(0, count + delta));
            if (updated == 0) _sessions.TryRemove(new KeyValuePair<string, int>(hop.ShardKey, 0));
        }
    }

    private sealed class Lease : IDisposable
    {
        private RouteLoad? _owner;
        private readonly RoutePlan _plan;

        public Lease(RouteLoad owner, RoutePlan plan)
        {
            _owner = owner;
            _plan = plan;
            owner.Add(plan, +1);
        }

        public void Dispose() => Interlocked.Exchange(ref _owner, null)?.Add(_plan, -1);
    }
}
