using System.Text.Json;

namespace Potluck.Cli.Serve;

/// <summary>
/// How many of the nodes `serve` started are serving, read from /readyz's replicas per span. With node ids in the
/// answer (an unguarded gateway) each node is named as it starts serving; without them (an admin key guards pool
/// details) the replicas of each planned span are counted.
/// </summary>
public sealed class PoolProgress(IReadOnlyList<NodeAssignment> nodes)
{
    private readonly HashSet<string> _serving = new(StringComparer.Ordinal);
    private int _counted;

    public bool AllServing => Serving == nodes.Count;

    public int Serving => Math.Max(_serving.Count, _counted);

    /// <summary>Reads one /readyz body; returns a progress line for each node (or count) that started serving since the last.</summary>
    /// <exception cref="JsonException">The body is not JSON.</exception>
    public IReadOnlyList<string> Update(string readyzBody)
    {
        using var document = JsonDocument.Parse(readyzBody);
        if (!document.RootElement.TryGetProperty("spans", out var spans) || spans.ValueKind != JsonValueKind.Array) return [];
        var lines = new List<string>();
        var counted = 0;
        foreach (var planned in nodes.GroupBy(node => (node.Start, node.End)))
        {
            var span = spans.EnumerateArray().FirstOrDefault(s => s.GetProperty("start").GetInt32() == planned.Key.Start && s.GetProperty("end").GetInt32() == planned.Key.End);
            if (span.ValueKind != JsonValueKind.Object) continue;
            counted += Math.Min(planned.Count(), span.GetProperty("replicas").GetInt32());
            if (!span.TryGetProperty("nodes", out var ids)) continue;
            foreach (var id in ids.EnumerateArray().Select(id => id.GetString()))
            {
                var node = planned.FirstOrDefault(n => n.Name == id);
                if (node is not null && _serving.Add(node.Name))
                    lines.Add($"{node.Name} serves {node.Range} ({_serving.Count} of {nodes.Count} nodes serving)");
            }
        }
        if (_serving.Count == 0 && counted > _counted)
            lines.Add($"{counted} of {nodes.Count} nodes serving ({Spans(spans)})");
        _counted = counted;
        return lines;
    }

    /// <summary>For the timeout message: who is still missing.</summary>
    public string Describe()
    {
        if (_serving.Count > 0)
            return $"{_serving.Count} of {nodes.Count} nodes serving; not serving: {string.Join(", ", nodes.Where(n => !_serving.Contains(n.Name)).Select(n => $"{n.Name} {n.Range}"))}";
        return $"{_counted} of {nodes.Count} nodes serving";
    }

    private static string Spans(JsonElement spans) =>
        string.Join(", ", spans.EnumerateArray().Select(s => $"{s.GetProperty("layers").GetString()} x{s.GetProperty("replicas").GetInt32()}"));
}
