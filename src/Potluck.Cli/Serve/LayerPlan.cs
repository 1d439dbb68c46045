using Potluck.Cluster;

namespace Potluck.Cli.Serve;

/// <summary>One node's assignment in a local pool: which layers [Start, End) it loads.</summary>
public sealed record NodeAssignment(string Name, int SpanIndex, int Replica, int Start, int End)
{
    /// <summary>What its `--layers` gets: "4:8".</summary>
    public string Layers => LayerRange.Input(Start, End);

    /// <summary>What people read: "[4, 8)".</summary>
    public string Range => LayerRange.Format(Start, End);
}

/// <summary>Splits a model's layers into nodes/replicas contiguous spans of near-equal size, each held by `replicas` nodes.</summary>
public static class LayerPlan
{
    public static IReadOnlyList<NodeAssignment> Split(int layerCount, int nodes, int replicas)
    {
        if (layerCount < 1) throw new ArgumentOutOfRangeException(nameof(layerCount), "a model needs at least one layer");
        if (nodes < 1) throw new UsageException($"--nodes must be at least 1 (got {nodes})");
        if (replicas < 1) throw new UsageException($"--replicas must be at least 1 (got {replicas})");
        if (nodes % replicas != 0)
            throw new UsageException($"--nodes ({nodes}) must be a multiple of --replicas ({replicas}): each span is held by the same number of nodes");
        var spans = nodes / replicas;
        if (spans > layerCount)
            throw new UsageException($"{spans} spans need at least {spans} layers, but the model has {layerCount}; use fewer --nodes or more --replicas");

        // The first (layerCount % spans) spans take one extra layer, so sizes differ by at most one.
        var baseSize = layerCount / spans;
        var extra = layerCount % spans;
        var assignments = new List<NodeAssignment>(nodes);
        var start = 0;
        for (var span = 0; span < spans; span++)
        {
            var end = start + baseSize + (span < extra ? 1 : 0);
            for (var replica = 0; replica < replicas; replica++)
                assignments.Add(new NodeAssignment($"node-{assignments.Count + 1}", span, replica, start, end));
            start = end;
        }
        return assignments;
    }
}
