using System.Globalization;
using Potluck.Inference.Gguf;
using Potluck.Node.Joining;

namespace Potluck.Node.Hosting;

/// <summary>
/// The KV budget a node's span gets, in tokens. Explicit: <see cref="NodeOptions.KvBudgetTokens"/>, or
/// <see cref="NodeOptions.KvBudgetBytes"/> at the span's bytes per token. Default: the memory this process may use
/// (<see cref="NodeCapacity.DetectBudgetBytes"/>: available memory less a runtime reserve) divided by the nodes on
/// the host, less the span's weights, spent on KV plus the output rows a non-final stage keeps for failover; never
/// less than one full context. Sessions draw on it block by block as they grow, so a large budget costs nothing
/// until it is used.
/// </summary>
public static class KvBudget
{
    public static long ResolveTokens(NodeOptions options, ModelInfo model, int start, int end) =>
        ResolveTokens(options, model, start, end, NodeCapacity.DetectBudgetBytes());

    internal static long ResolveTokens(NodeOptions options, ModelInfo model, int start, int end, long processBudgetBytes)
    {
        if (options.KvBudgetTokens is { } tokens) return tokens;
        var kvPerToken = 0L;
        for (var l = start; l < end; l++) kvPerToken += NodeCapacity.KvBytesPerToken(model, l);
        kvPerToken = Math.Max(1, kvPerToken);
        if (options.KvBudgetBytes is { } bytes) return Math.Max(1, bytes / kvPerToken);
        var weights = NodeCapacity.EstimateLayerBytes(model, 0).Skip(start).Take(end - start).Sum();
        var outputPerToken = end == model.LayerCount ? 0 : (long)model.EmbeddingLength * sizeof(ushort);
        var room = processBudgetBytes / Math.Max(1, options.NodesOnHost) - weights;
        return Math.Max(model.ContextLength, room / (kvPerToken + outputPerToken));
    }

    /// <summary>
    /// Parses a --kv-budget value: a token count ("65536") or a size with a unit ("8GiB", "512MB", "1.5G").
    /// Returns (tokens, null) or (null, bytes); null when the text is neither.
    /// </summary>
    public static (long? Tokens, long? Bytes)? Parse(string text)
    {
        var s = text.Trim();
        if (long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var count))
            return count > 0 ? (count, null) : null;
        var digits = 0;
        while (digits < s.Length && (char.IsAsciiDigit(s[digits]) || s[digits] == '.')) digits++;
        if (digits == 0 || !double.TryParse(s.AsSpan(0, digits), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value)) return null;
        double? scale = s[digits..].Trim().ToUpperInvariant() switch
        {
            "B" => 1,
            "K" or "KB" => 1e3, "KIB" => 1L << 10,
            "M" or "MB" => 1e6, "MIB" => 1L << 20,
            "G" or "GB" => 1e9, "GIB" => 1L << 30,
            "T" or "TB" => 1e12, "TIB" => 1L << 40,
            "TOKENS" or "TOKEN" => null,
            _ => -1,
        };
        if (scale is null) return value >= 1 && value == Math.Floor(value) ? ((long)value, null) : null;
        if (scale < 0) return null;
        var total = value * scale.Value;
        return total is >= 1 and < long.MaxValue ? (null, (long)total) : null;
    }
}
