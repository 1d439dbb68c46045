using Potluck.Cluster.Joining;
using Potluck.Cluster;

namespace Potluck.Node.Joining;

/// <summary>Whether a serving node should move to another span, and why (logged either way).</summary>
/// <param name="MoveTo">The span to load next; null to stay.</param>
public sealed record RebalanceDecision(SpanChoice? MoveTo, string Reason);

/// <summary>
/// Decides, from the pool's current spans, whether this node's span is better spent elsewhere (pure, unit-tested).
/// A node only moves when its layers stay served without it: other healthy, serving spans chain from its first
/// boundary to its last (a replica, or several spans lining up). Then it moves when
/// <list type="bullet">
/// <item>some layers have no holder, or the pool has no full chain: to the span <see cref="SpanChooser"/> picks
/// for the pool without this node (gaps and chain completion first);</item>
/// <item>or, with every layer served, by Petals' rule: when the pool's weakest layer throughput after the move would
/// be at least <see cref="DefaultMinImprovement"/> times what it is now.</item>
/// </list>
/// The caller loads the new span before it drops the old one, so coverage never breaks.
/// </summary>
public static class RebalancePlanner
{
    /// <summary>
    /// Petals moves a server only when the swarm's throughput would improve by 1/0.75 ("balance quality" 0.75):
    /// measured speeds are noisy, and smaller gains would make nodes hop back and forth.
    /// </summary>
    public const double DefaultMinImprovement = 4.0 / 3.0;

    public static RebalanceDecision Consider(int layerCount, IReadOnlyList<JoinSpan> spans, string ownNodeId, NodeCapacity capacity,
        double? ownMsPerLayer, double minImprovement = DefaultMinImprovement)
    {
        JoinSpan? own = null;
        foreach (var span in spans)
        {
            if (span.NodeId == ownNodeId && span.Healthy && !span.Joining && span.End <= layerCount) own = span;
        }
        if (own is null) return new RebalanceDecision(null, $"node {ownNodeId} is not serving a healthy span yet");

        var others = SpanChooser.Counted(layerCount, spans, ownNodeId);
        var serving = new List<JoinSpan>(others.Count);
        foreach (var span in others)
            if (span.Healthy && !span.Joining) serving.Add(span);
        if (!Chains(serving, own.Start, own.End))
            return new RebalanceDecision(null, $"no other serving span chain holds layers {LayerRange.Format(own.Start, own.End)}; this node stays");

        SpanChoice choice;
        try
        {
            choice = SpanChooser.Choose(layerCount, spans, capacity, ownNodeId, ownMsPerLayer);
        }
        catch (SpanChoiceException e)
        {
            return new RebalanceDecision(null, $"no other span fits: {e.Message}");
        }
        if (choice.Start == own.Start && choice.End == own.End)
            return new RebalanceDecision(null, $"layers {LayerRange.Format(own.Start, own.End)} are still the best place for this node ({choice.Reason})");

        var reachable = SpanChooser.Reachable(layerCount, others);
        if (!reachable[layerCount])
            return new RebalanceDecision(choice, $"layers {LayerRange.Format(own.Start, own.End)} stay served by other nodes, and the pool lacks a chain: {choice.Reason}");

        // Every layer is served either way: move only for a clear gain of the pool's weakest layer.
        var assumed = SpanChooser.AssumedMsPerLayer(others, ownMsPerLayer);
        var throughput = SpanChooser.LayerThroughput(layerCount, others, assumed);
        var ownLayers = own.End - own.Start;
        var ownTokens = SpanChooser.TokensPerSecond(own, assumed);
        // This node's speed is measured twice (the speed probe, and its start-up median in the pool's view). Noise on a
        // shared machine only adds time, so the faster of the two is the nearer; a slow start-up alone must not pin it.
        if (ownMsPerLayer is { } probe && double.IsFinite(probe) && probe > 0)
            ownTokens = Math.Max(ownTokens, 1000.0 / (probe * ownLayers));
        var msPerLayer = ownTokens > 0 ? 1000.0 / ownTokens / ownLayers : assumed;
        var movedTokens = 1000.0 / (msPerLayer * (choice.End - choice.Start));
        var now = WeakestWith(throughput, own.Start, own.End, ownTokens);
        var after = WeakestWith(throughput, choice.Start, choice.End, movedTokens);
        if (after < now * minImprovement)
            return new RebalanceDecision(null,
                $"moving to layers {LayerRange.Format(choice.Start, choice.End)} would raise the pool's weakest layer only from {now:F1} to {after:F1} tokens/s " +
                $"(needs {minImprovement:F2}x); this node stays");
        return new RebalanceDecision(choice,
            $"moving from layers {LayerRange.Format(own.Start, own.End)} to {LayerRange.Format(choice.Start, choice.End)} raises the pool's weakest layer from {now:F1} to {after:F1} tokens/s");
    }

    /// <summary>True when <paramref name="spans"/> chain from boundary <paramref name="from"/> to <paramref name="to"/>.</summary>
    internal static bool Chains(List<JoinSpan> spans, int from, int to)
    {
        var reach = new HashSet<int> { from };
        // Spans only go forward: settle boundaries in increasing order.
        for (var b = from; b < to; b++)
        {
            if (!reach.Contains(b)) continue;
            foreach (var span in spans)
                if (span.Start == b && span.End <= to) reach.Add(span.End);
        }
        return reach.Contains(to);
    }

    private static double WeakestWith(double[] throughput, int start, int end, double added)
    {
        var weakest = double.PositiveInfinity;
        for (var l = 0; l < throughput.Length; l++)
            weakest = Math.Min(weakest, throughput[l] + (l >= start && l < end ? added : 0));
        return weakest;
    }
}
