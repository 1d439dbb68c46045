using Potluck.Cluster.Joining;
using Potluck.Cluster;

namespace Potluck.Node.Joining;

/// <summary>The span a joining node should load, and why (shown to the operator).</summary>
public sealed record SpanChoice(int Start, int End, string Reason)
{
    public override string ToString() => LayerRange.Format(Start, End);
}

/// <summary>No span is worth loading on this node; the message says what to change.</summary>
public sealed class SpanChoiceException(string message) : Exception(message);

/// <summary>
/// Picks a joining node's span from the pool's current spans (pure, so it is unit-tested directly).
/// Routes are chains of spans whose boundaries meet exactly (one ends where the next starts), so the choice
/// thinks in boundaries, not just covered layers:
/// <list type="number">
/// <item>If no chain covers [0, N) yet and one span [s, e) that fits would complete it (s reachable from 0,
/// N reachable from e), take the shortest such span.</item>
/// <item>Otherwise fill the largest run of layers no healthy node holds, from its first layer, as far as
/// memory allows (its first layer is always where some span ends, so it joins up).</item>
/// <item>If every layer is held but the spans do not line up, extend the chain from its furthest boundary.</item>
/// <item>If the pool can already serve, Petals' rule: every layer's total throughput is the sum of the tokens/s
/// of the spans covering it; among the windows that chain and fit, take the one whose weakest layer has the least
/// total throughput (then the lower sum, then fewer layers, then the earlier start).</item>
/// </list>
/// Unhealthy spans and this node's own earlier spans (a restart with the same id) do not count. Spans of nodes
/// that announced themselves and are still loading (<see cref="JoinSpan.Joining"/>) count as held, so two nodes
/// joining at once do not fill the same gap; their throughput is not measured yet and is assumed.
/// </summary>
public static class SpanChooser
{
    /// <summary>
    /// Per-layer decode time assumed for a span with no measurement (joining, or from an older node) when neither
    /// this node's own probe nor any measured span gives a better figure. 1 ms per layer is the order of a
    /// 7B-class layer on a desktop CPU; it only matters relative to measured spans, and those are preferred.
    /// </summary>
    public const double FallbackMsPerLayer = 1.0;

    /// <param name="ownMsPerLayer">This node's measured decode time per layer (the speed probe); it fills in for
    /// spans that have no measurement and is shown in the reason. Null when unknown.</param>
    public static SpanChoice Choose(int layerCount, IReadOnlyList<JoinSpan> spans, NodeCapacity capacity, string? ownNodeId = null,
        double? ownMsPerLayer = null)
    {
        if (layerCount < 1) throw new ArgumentOutOfRangeException(nameof(layerCount));
        if (capacity.LayerCount != layerCount) throw new ArgumentException("capacity is for another layer count", nameof(capacity));
        var live = Counted(layerCount, spans, ownNodeId);

        var reachable = Reachable(layerCount, live);
        if (reachable[layerCount]) return LeastThroughput(layerCount, live, capacity, reachable, ownMsPerLayer);

        var completing = CompletingSpan(layerCount, live, capacity, reachable);
        if (completing is not null) return completing;

        var gap = LargestGap(layerCount, live);
        if (gap is { } g)
        {
            var end = Math.Min(g.End, capacity.MaxEnd(g.Start));
            if (end == g.Start) throw NothingFits(capacity, g.Start);
            return new SpanChoice(g.Start, end, end == g.End
                ? $"layers {LayerRange.Format(g.Start, g.End)} are held by no node"
                : $"layers {LayerRange.Format(g.Start, g.End)} are held by no node; this node has room for {end - g.Start} of them");
        }

        // Every layer is held, but the spans do not meet end to start: grow the chain from its furthest boundary.
        var from = layerCount - 1;
        while (!reachable[from]) from--;
        var extended = capacity.MaxEnd(from);
        if (extended == from) throw NothingFits(capacity, from);
        return new SpanChoice(from, extended, $"the pool's spans do not line up at layer {from}; this span continues the chain from there");
    }

    /// <summary>The spans a choice counts: healthy or announced (joining), inside the model, not this node's own.</summary>
    internal static List<JoinSpan> Counted(int layerCount, IReadOnlyList<JoinSpan> spans, string? ownNodeId)
    {
        var live = new List<JoinSpan>(spans.Count);
        foreach (var span in spans)
        {
            if ((span.Healthy || span.Joining) && span.Start >= 0 && span.End > span.Start && span.End <= layerCount
                && !string.Equals(span.NodeId, ownNodeId, StringComparison.Ordinal))
                live.Add(span);
        }
        return live;
    }

    /// <summary>
    /// The decode time per layer assumed for spans without a measurement: this node's own probe when known, else
    /// the median per-layer time of the measured spans, else <see cref="FallbackMsPerLayer"/>.
    /// </summary>
    public static double AssumedMsPerLayer(IReadOnlyList<JoinSpan> spans, double? ownMsPerLayer)
    {
        if (ownMsPerLayer is { } own && double.IsFinite(own) && own > 0) return own;
        var perLayer = new List<double>(spans.Count);
        foreach (var span in spans)
            if (IsMeasured(span)) perLayer.Add(span.MsPerToken / (span.End - span.Start));
        if (perLayer.Count == 0) return FallbackMsPerLayer;
        perLayer.Sort();
        return perLayer[perLayer.Count / 2];
    }

    /// <summary>A span's decode throughput in tokens/s: 1000 / its measured ms per token, or the assumed speed for its length.</summary>
    public static double TokensPerSecond(JoinSpan span, double assumedMsPerLayer) =>
        IsMeasured(span) ? 1000.0 / span.MsPerToken : 1000.0 / (assumedMsPerLayer * (span.End - span.Start));

    /// <summary>Per layer, the summed tokens/s of the given spans that cover it (Petals' "throughput per block").</summary>
    public static double[] LayerThroughput(int layerCount, IReadOnlyList<JoinSpan> spans, double assumedMsPerLayer)
    {
        var throughput = new double[layerCount];
        foreach (var span in spans)
        {
            var tokens = TokensPerSecond(span, assumedMsPerLayer);
            for (var l = span.Start; l < span.End && l < layerCount; l++) throughput[l] += tokens;
        }
        return throughput;
    }

    private static bool IsMeasured(JoinSpan span) => !span.Joining && double.IsFinite(span.MsPerToken) && span.MsPerToken > 0;

    private static SpanChoice LeastThroughput(int layerCount, List<JoinSpan> spans, NodeCapacity capacity, bool[] reachable, double? ownMsPerLayer)
    {
        var finishing = Finishing(layerCount, spans);
        var assumed = AssumedMsPerLayer(spans, ownMsPerLayer);
        var throughput = LayerThroughput(layerCount, spans, assumed);
        var best = BestWindow(layerCount, throughput, capacity, reachable, finishing);
        if (best is not { } chosen)
        {
            var widest = 0;
            foreach (var span in spans) widest = Math.Max(widest, span.End - span.Start);
            throw new SpanChoiceException(
                $"every layer is already served, and no span that lines up with the pool's boundaries fits in this node ({MaxLayersAnywhere(capacity)} layers " +
                $"in {FormatBytes(capacity.BudgetBytes)}; the pool's spans have up to {widest} layers); pass --layers A:B to hold part of one, or raise --memory/--max-layers");
        }
        var poolWeakest = 0;
        for (var l = 1; l < layerCount; l++)
            if (throughput[l] < throughput[poolWeakest]) poolWeakest = l;
        var holders = 0;
        foreach (var span in spans)
            if (span.Start <= chosen.Weakest && chosen.Weakest < span.End) holders++;
        var reason = $"every layer is served; layers {LayerRange.Format(chosen.Start, chosen.End)} have the least total throughput: " +
            $"weakest layer {chosen.Weakest} at {throughput[chosen.Weakest]:F1} tokens/s from {holders} span{(holders == 1 ? "" : "s")} " +
            $"(pool range {throughput[poolWeakest]:F1}-{Max(throughput):F1} tokens/s per layer)";
        if (ownMsPerLayer is { } own && own > 0)
            reason += $"; this node adds about {1000.0 / (own * (chosen.End - chosen.Start)):F1} tokens/s there";
        return new SpanChoice(chosen.Start, chosen.End, reason);
    }

    /// <summary>
    /// Among windows [s, e) that chain (s reachable from 0, e finishing) and fit, the one whose weakest layer has
    /// the least throughput; ties: lower summed throughput, fewer layers, earlier start.
    /// </summary>
    internal static (int Start, int End, int Weakest)? BestWindow(int layerCount, double[] throughput, NodeCapacity capacity, bool[] reachable, bool[] finishing)
    {
        (int Start, int End, int Weakest)? best = null;
        double bestMin = 0, bestSum = 0;
        for (var s = 0; s < layerCount; s++)
        {
            if (!reachable[s]) continue;
            var maxEnd = capacity.MaxEnd(s);
            var min = double.PositiveInfinity;
            var weakest = s;
            var sum = 0.0;
            for (var e = s + 1; e <= maxEnd; e++)
            {
                var t = throughput[e - 1];
                sum += t;
                if (t < min)
                {
                    min = t;
                    weakest = e - 1;
                }
                if (!finishing[e]) continue;
                if (best is null || Better(min, sum, e - s, bestMin, bestSum, best.Value.End - best.Value.Start))
                {
                    best = (s, e, weakest);
                    bestMin = min;
                    bestSum = sum;
                }
            }
        }
        return best;
    }

    // Throughputs are measured, so compare with a relative tolerance: 0.1 % apart counts as equal.
    private static bool Better(double min, double sum, int layers, double bestMin, double bestSum, int bestLayers)
    {
        if (!NearlyEqual(min, bestMin)) return min < bestMin;
        if (!NearlyEqual(sum, bestSum)) return sum < bestSum;
        return layers < bestLayers; // equal length: the earlier start was seen first and stays
    }

    private static bool NearlyEqual(double a, double b) => Math.Abs(a - b) <= 1e-3 * Math.Max(Math.Abs(a), Math.Abs(b)) + 1e-9;

    private static double Max(double[] values)
    {
        var max = 0.0;
        foreach (var v in values) max = Math.Max(max, v);
        return max;
    }

    /// <summary>reachable[b]: a chain of spans leads from layer 0 to boundary b.</summary>
    internal static bool[] Reachable(int layerCount, List<JoinSpan> spans)
    {
        var reachable = new bool[layerCount + 1];
        reachable[0] = true;
        // Spans only go forward, so one pass in order of boundary settles every boundary.
        for (var b = 0; b < layerCount; b++)
        {
            if (!reachable[b]) continue;
            foreach (var span in spans)
                if (span.Start == b) reachable[span.End] = true;
        }
        return reachable;
    }

    /// <summary>finishing[b]: a chain of spans leads from boundary b to the last layer.</summary>
    internal static bool[] Finishing(int layerCount, List<JoinSpan> spans)
    {
        var finishing = new bool[layerCount + 1];
        finishing[layerCount] = true;
        for (var b = layerCount - 1; b >= 0; b--)
        {
            foreach (var span in spans)
                if (span.Start == b && finishing[span.End]) finishing[b] = true;
        }
        return finishing;
    }

    private static SpanChoice? CompletingSpan(int layerCount, List<JoinSpan> spans, NodeCapacity capacity, bool[] reachable)
    {
        var finishing = Finishing(layerCount, spans);
        int bestStart = -1, bestEnd = -1;
        for (var s = 0; s < layerCount; s++)
        {
            if (!reachable[s]) continue;
            var maxEnd = capacity.MaxEnd(s);
            for (var e = s + 1; e <= maxEnd; e++)
            {
                if (!finishing[e]) continue;
                // Shortest first: it uses the least memory and leaves room for replicas elsewhere.
                if (bestStart < 0 || e - s < bestEnd - bestStart) (bestStart, bestEnd) = (s, e);
                break;
            }
        }
        if (bestStart < 0) return null;
        var reason = spans.Count == 0
            ? (bestEnd - bestStart == layerCount ? "the pool holds no layers yet; this node holds the whole model" : "the pool holds no layers yet")
            : $"layers {LayerRange.Format(bestStart, bestEnd)} complete the pool's chain";
        return new SpanChoice(bestStart, bestEnd, reason);
    }

    private static (int Start, int End)? LargestGap(int layerCount, List<JoinSpan> spans)
    {
        var held = new bool[layerCount];
        foreach (var span in spans)
            for (var l = span.Start; l < span.End; l++) held[l] = true;
        (int Start, int End)? best = null;
        var l0 = 0;
        while (l0 < layerCount)
        {
            if (held[l0])
            {
                l0++;
                continue;
            }
            var l1 = l0;
            while (l1 < layerCount && !held[l1]) l1++;
            if (best is null || l1 - l0 > best.Value.End - best.Value.Start) best = (l0, l1);
            l0 = l1;
        }
        return best;
    }

    private static int MaxLayersAnywhere(NodeCapacity capacity)
    {
        var most = 0;
        for (var s = 0; s < capacity.LayerCount; s++) most = Math.Max(most, capacity.MaxEnd(s) - s);
        return most;
    }

    private static SpanChoiceException NothingFits(NodeCapacity capacity, int layer) =>
        new($"not even layer {layer} fits in this node's memory budget of {FormatBytes(capacity.BudgetBytes)} " +
            $"(it needs {FormatBytes(capacity.BytesOf(layer, layer + 1))} with its KV budget); raise --memory or lower --kv-tokens");

    internal static string FormatBytes(long bytes) =>
        bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F1} GiB" : bytes >= 1L << 20 ? $"{bytes / (double)(1L << 20):F1} MiB" : $"{bytes / 1024.0:F1} KiB";
}
