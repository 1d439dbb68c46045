using Potluck.Cluster;

namespace Potluck.Gateway.Routing;

/// <summary>One loaded span on one node, as the router sees it.</summary>
/// <param name="MsPerToken">The node's measured decode time for its whole span (one token, one session).</param>
/// <param name="HopLatencyMs">Measured network round trip from the gateway to this node; NaN when not measured yet.</param>
public sealed record StageCandidate(
    string NodeId,
    string Endpoint,
    int LayerStart,
    int LayerEnd,
    bool Healthy,
    string? Problem,
    int OpenSessions,
    long FreeKvTokens,
    long KvBudgetTokens,
    double MsPerToken,
    double HopLatencyMs,
    double StepsPerSecond,
    int? ProcessId = null)
{
    public string ShardKey => Potluck.Cluster.ShardKeys.For(NodeId, LayerStart, LayerEnd);
}

/// <summary>
/// A node in the cluster serving another model than this gateway (another GGUF file): never routed to,
/// shown as "model-mismatch" in /api/pool. Layers are (0, 0) when unknown.
/// </summary>
public sealed record MismatchedNode(string NodeId, string Endpoint, int LayerStart, int LayerEnd, string ModelId, int? ProcessId);

/// <summary>The pool for one model at one moment: what the planner and the ops endpoints read.</summary>
public sealed record PoolSnapshot(string ModelId, int LayerCount, IReadOnlyList<StageCandidate> Stages, DateTime AsOfUtc)
{
    /// <summary>Nodes of other models seen in the cluster (their own pool, or a wrong file).</summary>
    public IReadOnlyList<MismatchedNode> MismatchedNodes { get; init; } = [];

    public static PoolSnapshot Empty(string modelId, int layerCount) => new(modelId, layerCount, [], DateTime.UtcNow);
}

/// <summary>A chain of stages covering [0, LayerCount) in order.</summary>
public sealed record RoutePlan(IReadOnlyList<StageCandidate> Hops, double EstimatedMsPerToken)
{
    public override string ToString()
    {
        var parts = new string[Hops.Count];
        for (var i = 0; i < Hops.Count; i++) parts[i] = $"{Hops[i].NodeId} {LayerRange.Format(Hops[i].LayerStart, Hops[i].LayerEnd)}";
        return string.Join(" → ", parts);
    }

    /// <summary>
    /// ASCII form for the x-potluck-route response header: "nodeId:start-end" per hop ([start, end)), space separated.
    /// A machine-read format kept as it was (clients split it); people read the "[4, 8)" form everywhere else.
    /// </summary>
    public string HeaderValue
    {
        get
        {
            var parts = new string[Hops.Count];
            for (var i = 0; i < Hops.Count; i++) parts[i] = $"{Hops[i].NodeId}:{Hops[i].LayerStart}-{Hops[i].LayerEnd}";
            return string.Join(' ', parts);
        }
    }
}

/// <summary>Layers [Start, End) that no healthy stage holds.</summary>
public readonly record struct LayerGap(int Start, int End)
{
    public override string ToString() => LayerRange.Format(Start, End);

    /// <summary>The node flag that fills exactly this gap, pasted as given: "--layers 4:8".</summary>
    public string Hint => $"--layers {LayerRange.Input(Start, End)}";
}
