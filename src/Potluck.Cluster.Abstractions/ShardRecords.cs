namespace Potluck.Cluster;

/// <summary>
/// What one loaded span looks like right now. Published by the node that holds it; the gateway plans
/// routes from these. Positional records: never reorder parameters (Orleans ids follow their order).
/// </summary>
[GenerateSerializer, Immutable, Alias("potluck.ShardStatus")]
public sealed record ShardStatus(
    string NodeId,
    string ModelId,
    int LayerStart,
    int LayerEnd,
    int LayerCount,
    int Width,
    string GrpcEndpoint,
    long KvBudgetTokens,
    long FreeKvTokens,
    long KvBytesPerToken,
    int OpenSessions,
    double StepsPerSecond,
    double MeasuredMsPerToken,
    string SiloAddress,
    DateTime ReportedAtUtc,
    bool Draining)
{
    /// <summary>The grain key of this span's <see cref="IShardGrain"/>.</summary>
    public string ShardKey => ShardKeys.For(NodeId, LayerStart, LayerEnd);

    public bool IsFinal => LayerEnd == LayerCount;
}

/// <summary>One shard as the pool sees it, with its health judged by membership and report age.</summary>
[GenerateSerializer, Immutable, Alias("potluck.PoolShard")]
public sealed record PoolShard(ShardStatus Status, bool Healthy, string? Problem);

/// <summary>
/// Who holds which layers of which model, as of <see cref="AsOfUtc"/>. <see cref="DirectoryEpoch"/> changes when the
/// pool directory's activation is new (its silo died or it was collected): its soft state then refills as nodes report.
/// </summary>
[GenerateSerializer, Immutable, Alias("potluck.PoolView")]
public sealed record PoolView(IReadOnlyList<PoolShard> Shards, DateTime AsOfUtc, Guid DirectoryEpoch = default)
{
    /// <summary>Healthy shards of one model, ordered by first layer.</summary>
    public IReadOnlyList<ShardStatus> HealthyShards(string modelId)
    {
        var list = new List<ShardStatus>();
        foreach (var shard in Shards)
            if (shard.Healthy && !shard.Status.Draining && shard.Status.ModelId == modelId)
                list.Add(shard.Status);
        list.Sort((a, b) => a.LayerStart != b.LayerStart ? a.LayerStart.CompareTo(b.LayerStart) : b.FreeKvTokens.CompareTo(a.FreeKvTokens));
        return list;
    }

    /// <summary>
    /// A chain of healthy shards covering [0, layerCount) exactly, preferring the most free KV at each
    /// split point; null when the pool cannot serve the model right now.
    /// </summary>
    public IReadOnlyList<ShardStatus>? PlanRoute(string modelId, int layerCount, int maxTokens, ISet<string>? avoidNodes = null)
    {
        var candidates = HealthyShards(modelId);
        var route = new List<ShardStatus>();
        var next = 0;
        while (next < layerCount)
        {
            ShardStatus? best = null;
            foreach (var shard in candidates)
            {
                if (shard.LayerStart != next || shard.FreeKvTokens < maxTokens) continue;
                if (avoidNodes is not null && avoidNodes.Contains(shard.NodeId)) continue;
                // Longer spans mean fewer hops; among equals, more free KV.
                if (best is null || shard.LayerEnd > best.LayerEnd ||
                    (shard.LayerEnd == best.LayerEnd && shard.FreeKvTokens > best.FreeKvTokens))
                    best = shard;
            }
            if (best is null) return null;
            route.Add(best);
            next = best.LayerEnd;
        }
        return route;
    }
}

/// <summary>KV room one stage reserved for a session.</summary>
[GenerateSerializer, Immutable, Alias("potluck.SessionReservation")]
public sealed record SessionReservation(string SessionId, string NodeId, int LayerStart, int LayerEnd, long FreeKvTokensAfter);

/// <summary>Grain keys carry the node id first so the node-pinned placement can find the silo.</summary>
public static class ShardKeys
{
    public const char Separator = '/';

    public static string For(string nodeId, int layerStart, int layerEnd) => $"{nodeId}{Separator}{layerStart}-{layerEnd}";

    /// <summary>The node id part of a pinned grain key: everything before the first '/'.</summary>
    public static string NodeIdOf(string key)
    {
        var slash = key.IndexOf(Separator);
        return slash < 0 ? key : key[..slash];
    }

    public static void ValidateNodeId(string nodeId)
    {
        if (string.IsNullOrWhiteSpace(nodeId) || nodeId.Contains(Separator) || nodeId.Length > 128)
            throw new ArgumentException($"node id '{nodeId}' must be 1-128 characters without '/'", nameof(nodeId));
    }
}
