using Potluck.Cluster;

namespace Potluck.Gateway.Routing;

/// <summary>Why no route could be planned: a message for the 503 and the layers nobody holds.</summary>
public sealed record RouteFailure(string Message, IReadOnlyList<LayerGap> MissingLayers);

/// <summary>
/// Petals-style route planning: layer boundaries 0..N are graph vertices and every usable stage [s, e) is an
/// edge s → e weighted by its estimated time per decoded token. The cheapest path 0 → N is the route. Edges
/// only go forward, so one pass over the boundaries in order is an exact shortest path.
/// </summary>
public static class RoutePlanner
{
    /// <summary>Extra cost per session already open on a stage, as a fraction of its measured step time.</summary>
    public const double LoadPenaltyPerSession = 0.25;

    /// <summary>Hop latency assumed for a stage that has not been probed yet.</summary>
    public const double UnmeasuredHopMs = 1.0;

    /// <summary>
    /// Smallest hop cost charged: a Describe probe measures sub-millisecond hops (loopback, one LAN switch) mostly as
    /// scheduling noise, and noise must not outweigh load when choosing between replicas.
    /// </summary>
    public const double MinHopMs = 1.0;

    /// <summary>Step time assumed for a stage that has not measured itself.</summary>
    public const double UnmeasuredMsPerToken = 10.0;

    /// <summary>
    /// Cost factor for a stage a failover can keep: it already holds the session's KV, while a replacement must
    /// first rebuild it, so survivors win unless a replica is far cheaper.
    /// </summary>
    public const double KeptStageDiscount = 0.1;

    /// <summary>Estimated milliseconds one decode step spends on <paramref name="stage"/> including the hop into it.</summary>
    /// <param name="liveSessions">Sessions this gateway has open on the stage now (the report may be older).</param>
    public static double EdgeCost(StageCandidate stage, int sessionTokens, int liveSessions = 0)
    {
        var compute = stage.MsPerToken > 0 && double.IsFinite(stage.MsPerToken) ? stage.MsPerToken : UnmeasuredMsPerToken;
        var hop = stage.HopLatencyMs >= 0 && double.IsFinite(stage.HopLatencyMs) ? Math.Max(MinHopMs, stage.HopLatencyMs) : UnmeasuredHopMs;
        var load = 1.0 + LoadPenaltyPerSession * Math.Max(0, Math.Max(stage.OpenSessions, liveSessions));
        // Nearly full KV means the next sessions will be refused: steer away before that happens.
        var pressure = 0.0;
        if (stage.KvBudgetTokens > 0)
        {
            var usedAfter = 1.0 - (double)(stage.FreeKvTokens - sessionTokens) / stage.KvBudgetTokens;
            if (usedAfter > 0.8) pressure = compute * (usedAfter - 0.8) * 2.0;
        }
        // A busy stage also answers later: its gRPC work shares the cores with its compute.
        return (compute + hop) * load + pressure;
    }

    /// <summary>
    /// The cheapest chain of healthy stages with room for <paramref name="sessionTokens"/> KV tokens, or a failure.
    /// <paramref name="keep"/>: stages of a broken route being resumed, which hold the session already (their KV
    /// reservation is theirs, so they need no free room for it).
    /// </summary>
    public static RoutePlan? Plan(PoolSnapshot pool, int sessionTokens, IReadOnlySet<string>? avoidNodes, out RouteFailure? failure,
        IReadOnlyList<StageCandidate>? keep = null, RouteLoad? liveLoad = null)
    {
        var n = pool.LayerCount;
        var best = new double[n + 1];
        var via = new StageCandidate?[n + 1];
        Array.Fill(best, double.PositiveInfinity);
        best[0] = 0;
        // Stages sorted by start so each boundary's outgoing edges are relaxed after its own distance is final.
        var stages = new List<StageCandidate>(pool.Stages.Count);
        foreach (var stage in pool.Stages)
            if (Usable(stage, n, IsKept(stage, keep) ? 0 : sessionTokens, avoidNodes)) stages.Add(stage);
        stages.Sort(static (a, b) => a.LayerStart != b.LayerStart ? a.LayerStart.CompareTo(b.LayerStart) : string.CompareOrdinal(a.NodeId, b.NodeId));
        foreach (var stage in stages)
        {
            if (double.IsPositiveInfinity(best[stage.LayerStart])) continue;
            var live = liveLoad?.SessionsOn(stage.ShardKey) ?? 0;
            var cost = best[stage.LayerStart] + EdgeCost(stage, sessionTokens, live) * (IsKept(stage, keep) ? KeptStageDiscount : 1.0);
            if (cost < best[stage.LayerEnd])
            {
                best[stage.LayerEnd] = cost;
                via[stage.LayerEnd] = stage;
            }
        }
        if (double.IsPositiveInfinity(best[n]))
        {
            failure = Explain(pool, sessionTokens, avoidNodes);
            return null;
        }
        var hops = new List<StageCandidate>();
        for (var at = n; at > 0; at = via[at]!.LayerStart) hops.Add(via[at]!);
        hops.Reverse();
        failure = null;
        return new RoutePlan(hops, best[n]);
    }

    private static bool IsKept(StageCandidate stage, IReadOnlyList<StageCandidate>? keep)
    {
        if (keep is null) return false;
        foreach (var kept in keep)
            if (kept.NodeId == stage.NodeId && kept.LayerStart == stage.LayerStart && kept.LayerEnd == stage.LayerEnd) return true;
        return false;
    }

    private static bool Usable(StageCandidate stage, int layerCount, int sessionTokens, IReadOnlySet<string>? avoidNodes) =>
        stage.Healthy && stage.LayerStart >= 0 && stage.LayerEnd > stage.LayerStart && stage.LayerEnd <= layerCount &&
        stage.FreeKvTokens >= sessionTokens && (avoidNodes is null || !avoidNodes.Contains(stage.NodeId));

    /// <summary>Layers that no healthy stage holds at all (KV room aside), not counting <paramref name="avoidNodes"/>.</summary>
    public static IReadOnlyList<LayerGap> MissingLayers(PoolSnapshot pool, IReadOnlySet<string>? avoidNodes = null)
    {
        var covered = new bool[pool.LayerCount];
        foreach (var stage in pool.Stages)
        {
            if (!stage.Healthy || (avoidNodes is not null && avoidNodes.Contains(stage.NodeId))) continue;
            for (var l = Math.Max(0, stage.LayerStart); l < Math.Min(pool.LayerCount, stage.LayerEnd); l++) covered[l] = true;
        }
        var gaps = new List<LayerGap>();
        for (var l = 0; l < covered.Length; l++)
        {
            if (covered[l]) continue;
            var start = l;
            while (l < covered.Length && !covered[l]) l++;
            gaps.Add(new LayerGap(start, l));
        }
        return gaps;
    }

    private static int LayersIn(IReadOnlyList<LayerGap> gaps)
    {
        var layers = 0;
        foreach (var gap in gaps) layers += gap.End - gap.Start;
        return layers;
    }

    private static RouteFailure Explain(PoolSnapshot pool, int sessionTokens, IReadOnlySet<string>? avoidNodes)
    {
        // Nodes this request saw fail count as gone, even before membership declares them dead.
        var missing = MissingLayers(pool, avoidNodes);
        if (missing.Count > 0)
        {
            var list = string.Join(", ", missing);
            var failed = avoidNodes is { Count: > 0 } && LayersIn(MissingLayers(pool)) < LayersIn(missing)
                ? $" (node {string.Join(", ", avoidNodes)} failed and no replica holds them)" : "";
            // The hint is what `potluck node` takes, so pasting it fills exactly the gap.
            var hints = string.Join(" and another with ", missing.Select(gap => gap.Hint));
            return new RouteFailure(
                $"no node in the pool serves layers {list} of the model's {pool.LayerCount}{failed}; start a node with {hints} " +
                "(or join by the gateway's URL without --layers: the node takes the gap)",
                missing);
        }
        // Every layer is held by someone: the chain breaks on KV room, avoided (failed) nodes or unaligned spans.
        var reachable = new bool[pool.LayerCount + 1];
        reachable[0] = true;
        var withoutKv = new bool[pool.LayerCount + 1];
        withoutKv[0] = true;
        var sorted = new List<StageCandidate>(pool.Stages);
        sorted.Sort(static (a, b) => a.LayerStart.CompareTo(b.LayerStart));
        foreach (var s in sorted)
        {
            if (!s.Healthy || s.LayerStart < 0 || s.LayerEnd > pool.LayerCount || s.LayerEnd <= s.LayerStart) continue;
            if (withoutKv[s.LayerStart]) withoutKv[s.LayerEnd] = true;
            if (reachable[s.LayerStart] && Usable(s, pool.LayerCount, sessionTokens, avoidNodes)) reachable[s.LayerEnd] = true;
        }
        if (withoutKv[pool.LayerCount])
            return new RouteFailure(
                $"every layer is served, but no chain of nodes has room for {sessionTokens} more KV tokens right now" +
                (avoidNodes is { Count: > 0 } ? $" (excluding failed nodes {string.Join(", ", avoidNodes)})" : "") + "; retry later or use fewer tokens",
                []);
        var furthest = 0;
        for (var b = 0; b <= pool.LayerCount; b++) if (withoutKv[b]) furthest = b;
        return new RouteFailure(
            $"every layer is served, but the nodes' spans do not chain: no span starts at layer {furthest} after a chain covering " +
            $"{LayerRange.Format(0, furthest)}; start a node with {new LayerGap(furthest, pool.LayerCount).Hint}",
            [new LayerGap(furthest, pool.LayerCount)]);
    }
}
