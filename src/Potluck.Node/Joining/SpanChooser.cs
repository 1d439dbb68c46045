using Potluck.Contracts.Joining;

namespace Potluck.Node.Joining;

/// <summary>The span a joining node should load, and why (shown to the operator).</summary>
public sealed record SpanChoice(int Start, int End, string Reason)
{
    public override string ToString() => $"[{Start},{End})";
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
/// <item>If the pool can already serve, replicate the span with the highest load per replica that fits.</item>
/// </list>
/// Unhealthy spans and this node's own earlier spans (a restart with the same id) do not count.
/// </summary>
public static class SpanChooser
{
    public static SpanChoice Choose(int layerCount, IReadOnlyList<JoinSpan> spans, NodeCapacity capacity, string? ownNodeId = null)
    {
        if (layerCount < 1) throw new ArgumentOutOfRangeException(nameof(layerCount));
        if (capacity.LayerCount != layerCount) throw new ArgumentException("capacity is for another layer count", nameof(capacity));
        var live = new List<JoinSpan>(spans.Count);
        foreach (var span in spans)
        {
            if (span.Healthy && span.Start >= 0 && span.End > span.Start && span.End <= layerCount
                && !string.Equals(span.NodeId, ownNodeId, StringComparison.Ordinal))
                live.Add(span);
        }

        var reachable = Reachable(layerCount, live);
        if (reachable[layerCount]) return Replicate(live, capacity);

        var completing = CompletingSpan(layerCount, live, capacity, reachable);
        if (completing is not null) return completing;

        var gap = LargestGap(layerCount, live);
        if (gap is { } g)
        {
            var end = Math.Min(g.End, capacity.MaxEnd(g.Start));
            if (end == g.Start) throw NothingFits(capacity, g.Start);
            return new SpanChoice(g.Start, end, end == g.End
                ? $"layers {g.Start}-{g.End - 1} are held by no node"
                : $"layers {g.Start}-{g.End - 1} are held by no node; this node has room for {end - g.Start} of them");
        }

        // Every layer is held, but the spans do not meet end to start: grow the chain from its furthest boundary.
        var from = layerCount - 1;
        while (!reachable[from]) from--;
        var extended = capacity.MaxEnd(from);
        if (extended == from) throw NothingFits(capacity, from);
        return new SpanChoice(from, extended, $"the pool's spans do not line up at layer {from}; this span continues the chain from there");
    }

    /// <summary>reachable[b]: a chain of spans leads from layer 0 to boundary b.</summary>
    private static bool[] Reachable(int layerCount, List<JoinSpan> spans)
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
    private static bool[] Finishing(int layerCount, List<JoinSpan> spans)
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
            : $"layers {bestStart}-{bestEnd - 1} complete the pool's chain";
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

    private static SpanChoice Replicate(List<JoinSpan> spans, NodeCapacity capacity)
    {
        // Group replicas of the same span; load per replica decides which one needs help most.
        var groups = new Dictionary<(int Start, int End), (int Replicas, double StepsPerSecond, int Sessions, double MsPerToken)>();
        foreach (var span in spans)
        {
            groups.TryGetValue((span.Start, span.End), out var g);
            var ms = double.IsFinite(span.MsPerToken) ? span.MsPerToken : 0;
            var steps = double.IsFinite(span.StepsPerSecond) ? span.StepsPerSecond : 0;
            groups[(span.Start, span.End)] = (g.Replicas + 1, g.StepsPerSecond + steps, g.Sessions + span.OpenSessions, Math.Max(g.MsPerToken, ms));
        }
        (int Start, int End)? best = null;
        (int Replicas, double StepsPerSecond, int Sessions, double MsPerToken) bestLoad = default;
        var widest = 0;
        foreach (var (span, load) in groups)
        {
            widest = Math.Max(widest, span.End - span.Start);
            if (!capacity.Fits(span.Start, span.End)) continue;
            if (best is null || MoreLoaded(load, span, bestLoad, best.Value))
            {
                best = span;
                bestLoad = load;
            }
        }
        if (best is not { } chosen)
            throw new SpanChoiceException(
                $"every layer is already served, and every span in the pool ({widest} layers at most) is wider than this node can hold " +
                $"({MaxLayersAnywhere(capacity)} layers in {FormatBytes(capacity.BudgetBytes)}); pass --layers A-B to hold part of one, or raise --memory/--max-layers");
        var perReplica = bestLoad.StepsPerSecond / bestLoad.Replicas;
        return new SpanChoice(chosen.Start, chosen.End,
            $"every layer is served; layers {chosen.Start}-{chosen.End - 1} have the highest load per replica " +
            $"({bestLoad.Replicas} replica{(bestLoad.Replicas == 1 ? "" : "s")}, {perReplica:F1} steps/s and {(double)bestLoad.Sessions / bestLoad.Replicas:F1} sessions each)");
    }

    // Busiest per replica first; then fewer replicas, then the slowest span (the pipeline's bottleneck), then the earliest.
    private static bool MoreLoaded((int Replicas, double StepsPerSecond, int Sessions, double MsPerToken) a, (int Start, int End) spanA,
        (int Replicas, double StepsPerSecond, int Sessions, double MsPerToken) b, (int Start, int End) spanB)
    {
        var stepsA = a.StepsPerSecond / a.Replicas;
        var stepsB = b.StepsPerSecond / b.Replicas;
        if (Math.Abs(stepsA - stepsB) > 1e-9) return stepsA > stepsB;
        var sessionsA = (double)a.Sessions / a.Replicas;
        var sessionsB = (double)b.Sessions / b.Replicas;
        if (Math.Abs(sessionsA - sessionsB) > 1e-9) return sessionsA > sessionsB;
        if (a.Replicas != b.Replicas) return a.Replicas < b.Replicas;
        if (Math.Abs(a.MsPerToken - b.MsPerToken) > 1e-9) return a.MsPerToken > b.MsPerToken;
        return spanA.Start < spanB.Start;
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
