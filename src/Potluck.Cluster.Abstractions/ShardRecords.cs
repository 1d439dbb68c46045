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

    /// <summary>Why this report cannot be trusted as a routing entry, or null when it is well-formed.</summary>
    public string? Problem() => ShardValidation.Problem(this);
}

/// <summary>
/// Checks on what a node reports about itself, applied where reports enter (the pool directory) and again where
/// they are used (the gateway's pool monitor), so one malformed entry is refused instead of poisoning the view.
/// </summary>
public static class ShardValidation
{
    public const int MaxIdLength = 128;
    public const int MaxEndpointLength = 256;
    public const int MaxSiloAddressLength = 256;
    public const int MaxLayers = 1 << 16;
    public const int MaxWidth = 1 << 20;

    public static string? Problem(ShardStatus s)
    {
        if (s is null) return "report is null";
        if (NodeIdProblem(s.NodeId) is { } node) return node;
        if (string.IsNullOrEmpty(s.ModelId) || s.ModelId.Length > MaxIdLength) return $"model id must be 1-{MaxIdLength} characters";
        if (s.LayerCount is < 1 or > MaxLayers) return $"layer count {s.LayerCount} is not in [1, {MaxLayers}]";
        if (s.LayerStart < 0 || s.LayerStart >= s.LayerEnd || s.LayerEnd > s.LayerCount)
            return $"layers [{s.LayerStart}, {s.LayerEnd}) do not lie in order within [0, {s.LayerCount})";
        if (s.Width is < 1 or > MaxWidth) return $"width {s.Width} is not in [1, {MaxWidth}]";
        if (EndpointProblem(s.GrpcEndpoint) is { } endpoint) return endpoint;
        if (s.KvBudgetTokens < 0 || s.FreeKvTokens < 0 || s.FreeKvTokens > s.KvBudgetTokens)
            return $"free KV {s.FreeKvTokens} is not within the budget [0, {s.KvBudgetTokens}]";
        if (s.KvBytesPerToken < 0) return $"KV bytes per token {s.KvBytesPerToken} is negative";
        if (s.OpenSessions < 0) return $"open sessions {s.OpenSessions} is negative";
        if (!double.IsFinite(s.StepsPerSecond) || s.StepsPerSecond < 0) return $"steps per second {s.StepsPerSecond} is not a non-negative number";
        if (!double.IsFinite(s.MeasuredMsPerToken) || s.MeasuredMsPerToken < 0) return $"ms per token {s.MeasuredMsPerToken} is not a non-negative number";
        if (s.SiloAddress is null || s.SiloAddress.Length > MaxSiloAddressLength) return $"silo address must be at most {MaxSiloAddressLength} characters";
        return null;
    }

    public static string? NodeIdProblem(string? nodeId) =>
        string.IsNullOrWhiteSpace(nodeId) || nodeId.Contains(ShardKeys.Separator) || nodeId.Length > MaxIdLength || nodeId.Any(char.IsControl)
            ? $"node id '{Shorten(nodeId)}' must be 1-{MaxIdLength} printable characters without '/'"
            : null;

    /// <summary>A stage endpoint is an absolute http or https URL with a host and nothing after the port.</summary>
    public static string? EndpointProblem(string? endpoint)
    {
        if (string.IsNullOrEmpty(endpoint) || endpoint.Length > MaxEndpointLength)
            return $"endpoint must be 1-{MaxEndpointLength} characters";
        if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || string.IsNullOrEmpty(uri.Host)
            || uri.AbsolutePath != "/" || uri.Query.Length > 0 || uri.Fragment.Length > 0 || uri.UserInfo.Length > 0
            || endpoint.EndsWith('?') || endpoint.EndsWith('#'))
            return $"endpoint '{Shorten(endpoint)}' is not an absolute http(s) URL without path, query or credentials";
        return null;
    }

    private static string Shorten(string? text) => text is null ? "" : text.Length <= 64 ? text : text[..64] + "...";
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
