using System.Globalization;
using Potluck.Inference.Gguf;

namespace Potluck.Node.Joining;

/// <summary>
/// How many contiguous layers this machine can hold: each layer costs its weight bytes (from the GGUF tensor
/// index) plus its share of the KV budget (F16 K and V for every budgeted token), against a memory budget
/// and an optional layer cap.
/// </summary>
public sealed class NodeCapacity
{
    /// <summary>Kept free for the runtime, Orleans, Kestrel and buffers before any layer is counted.</summary>
    public const long RuntimeReserveBytes = 384L << 20;

    private readonly long[] _prefixBytes;

    /// <param name="layerBytes">What each layer costs in memory, index = layer.</param>
    /// <param name="budgetBytes">Memory the layers may use together.</param>
    /// <param name="maxLayers">Most layers to hold regardless of memory; null for no cap.</param>
    public NodeCapacity(IReadOnlyList<long> layerBytes, long budgetBytes, int? maxLayers = null)
    {
        if (maxLayers is < 1) throw new ArgumentOutOfRangeException(nameof(maxLayers), "at least one layer");
        LayerBytes = layerBytes;
        BudgetBytes = budgetBytes;
        MaxLayers = maxLayers;
        _prefixBytes = new long[layerBytes.Count + 1];
        for (var i = 0; i < layerBytes.Count; i++) _prefixBytes[i + 1] = _prefixBytes[i] + layerBytes[i];
    }

    public IReadOnlyList<long> LayerBytes { get; }
    public long BudgetBytes { get; }
    public int? MaxLayers { get; }
    public int LayerCount => LayerBytes.Count;

    /// <summary>Bytes layers [start, end) cost together.</summary>
    public long BytesOf(int start, int end) => _prefixBytes[end] - _prefixBytes[start];

    /// <summary>The largest end such that [start, end) fits; equals <paramref name="start"/> when not even one layer fits.</summary>
    public int MaxEnd(int start)
    {
        var limit = MaxLayers is { } cap ? Math.Min(LayerCount, start + cap) : LayerCount;
        var end = start;
        while (end < limit && BytesOf(start, end + 1) <= BudgetBytes) end++;
        return end;
    }

    public bool Fits(int start, int end) => end <= MaxEnd(start);

    /// <summary>
    /// Per-layer cost of <paramref name="model"/>: the bytes of every "blk.N." tensor plus
    /// <paramref name="kvTokens"/> positions of the layer's F16 KV cache (its family's widths); a mixture-of-experts layer counts all its experts.
    /// </summary>
    public static long[] EstimateLayerBytes(ModelInfo model, long kvTokens)
    {
        var bytes = new long[model.LayerCount];
        foreach (var tensor in model.Tensors)
        {
            if (LayerOf(tensor.Name) is { } layer && layer < bytes.Length) bytes[layer] += tensor.Bytes;
        }
        for (var i = 0; i < bytes.Length; i++) bytes[i] += KvBytesPerToken(model, i) * kvTokens;
        return bytes;
    }

    /// <summary>F16 KV bytes one position costs in <paramref name="layer"/> (what the engine allocates per session token).</summary>
    public static long KvBytesPerToken(ModelInfo model, int layer) =>
        layer < model.KvLayers.Count ? model.KvLayers[layer].BytesPerToken : 2L * model.KvHeadCount * model.HeadDim * sizeof(ushort);

    private static int? LayerOf(string tensorName)
    {
        if (!tensorName.StartsWith("blk.", StringComparison.Ordinal)) return null;
        var dot = tensorName.IndexOf('.', 4);
        return dot > 4 && int.TryParse(tensorName.AsSpan(4, dot - 4), NumberStyles.None, CultureInfo.InvariantCulture, out var layer) ? layer : null;
    }

    /// <summary>
    /// Memory this process could use for layers: the smaller of the machine's available memory and the
    /// container's cgroup room, less <see cref="RuntimeReserveBytes"/>, and 90 % of that for slack.
    /// </summary>
    public static long DetectBudgetBytes()
    {
        var available = AvailableMemoryBytes();
        return Math.Max(0, (available - RuntimeReserveBytes) / 10 * 9);
    }

    /// <summary>MemAvailable from /proc/meminfo, capped by cgroup v2 memory.max - memory.current; else what the GC sees.</summary>
    public static long AvailableMemoryBytes()
    {
        var available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (ReadMemAvailable() is { } memAvailable) available = memAvailable;
        if (ReadCgroupRoom() is { } room) available = Math.Min(available, room);
        return available;
    }

    private static long? ReadMemAvailable()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                // "MemAvailable:   12345678 kB"
                if (!line.StartsWith("MemAvailable:", StringComparison.Ordinal)) continue;
                var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return parts.Length >= 2 && long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var kb) ? kb * 1024 : null;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return null;
    }

    private static long? ReadCgroupRoom()
    {
        try
        {
            var max = File.ReadAllText("/sys/fs/cgroup/memory.max").Trim();
            if (max == "max" || !long.TryParse(max, NumberStyles.None, CultureInfo.InvariantCulture, out var limit)) return null;
            var current = long.TryParse(File.ReadAllText("/sys/fs/cgroup/memory.current").Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var used) ? used : 0;
            return Math.Max(0, limit - current);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Parses a size such as "8G", "8GiB", "512M", "1.5g" or a plain byte count (binary units).</summary>
    public static bool TryParseSize(string text, out long bytes)
    {
        bytes = 0;
        var s = text.Trim();
        var unitStart = s.Length;
        while (unitStart > 0 && char.IsAsciiLetter(s[unitStart - 1])) unitStart--;
        var unit = s[unitStart..].ToUpperInvariant();
        long scale = unit switch
        {
            "" or "B" => 1,
            "K" or "KB" or "KIB" => 1L << 10,
            "M" or "MB" or "MIB" => 1L << 20,
            "G" or "GB" or "GIB" => 1L << 30,
            "T" or "TB" or "TIB" => 1L << 40,
            _ => 0,
        };
        if (scale == 0 || !double.TryParse(s.AsSpan(0, unitStart).Trim(), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value)) return false;
        var result = value * scale;
        if (result is <= 0 or >= long.MaxValue) return false;
        bytes = (long)result;
        return true;
    }
}
