using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Potluck.Inference.Engine;
using Potluck.Node.Compute;

namespace Potluck.Node.Joining;

/// <summary>What the speed probe found: one transformer block's decode time on this machine, measured now or reused.</summary>
/// <param name="MsPerLayer">Median time of a one-row decode forward through one block, in ms.</param>
/// <param name="FromCache">True when the figure came from the cache file and nothing was run.</param>
/// <param name="Elapsed">How long getting the figure took (loading the block and timing it, or reading the cache).</param>
public sealed record SpeedProbeResult(double MsPerLayer, bool FromCache, DateTime MeasuredAtUtc, string CachePath, TimeSpan Elapsed);

/// <summary>
/// Measures how fast this machine runs one transformer block of a model, so a joining node can reason about the
/// throughput it would add (and about spans that have no measurement yet). It loads a one-layer span of the real
/// file and times a one-row decode forward (warm-up, then the median of <see cref="Repeats"/>), the same timing a
/// node does for its whole span at start-up. Results are cached per model id and machine (CPU model name, logical
/// core count, compute threads) in <c>speed-probes.json</c>, so a node that joins again starts without probing.
/// </summary>
public static class SpeedProbe
{
    public const int Repeats = 7;
    public const string CacheFileName = "speed-probes.json";

    /// <summary>KV room for the probe's one scratch session (it decodes at position 0 only).</summary>
    private const long ProbeKvTokens = 16;

    /// <summary>$XDG_CACHE_HOME/potluck, else ~/.cache/potluck (the XDG base-directory default).</summary>
    public static string DefaultCacheDirectory()
    {
        var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        // The spec says a relative XDG path is invalid and must be ignored.
        if (!string.IsNullOrWhiteSpace(xdg) && Path.IsPathRooted(xdg)) return Path.Combine(xdg, "potluck");
        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (string.IsNullOrEmpty(home)) home = Path.GetTempPath();
        return Path.Combine(home, ".cache", "potluck");
    }

    /// <summary>The cache key's machine part: what makes a measurement valid elsewhere only on the same hardware.</summary>
    public static SpeedProbeMachine ThisMachine(int threads) =>
        new(CpuModelName(), Environment.ProcessorCount, threads > 0 ? threads : Math.Max(1, Environment.ProcessorCount));

    /// <summary>The cached figure for this model and machine, else a fresh measurement (which is then cached).</summary>
    /// <param name="threads">Compute threads the node will use; 0 means all cores, as in <see cref="NodeOptions.Threads"/>.</param>
    public static SpeedProbeResult MeasureOrReuse(string modelPath, string modelId, int threads, string cacheDirectory)
    {
        var clock = Stopwatch.StartNew();
        var machine = ThisMachine(threads);
        var path = Path.Combine(cacheDirectory, CacheFileName);
        var entries = ReadCache(path);
        foreach (var entry in entries)
        {
            if (entry.ModelId == modelId && entry.Machine == machine && entry.MsPerLayer > 0 && double.IsFinite(entry.MsPerLayer))
                return new SpeedProbeResult(entry.MsPerLayer, FromCache: true, entry.MeasuredAtUtc, path, clock.Elapsed);
        }
        var ms = Measure(modelPath, machine.Threads);
        var now = DateTime.UtcNow;
        entries.RemoveAll(e => e.ModelId == modelId && e.Machine == machine);
        entries.Add(new SpeedProbeEntry(modelId, machine, Math.Round(ms, 4), now));
        WriteCache(path, entries);
        return new SpeedProbeResult(ms, FromCache: false, now, path, clock.Elapsed);
    }

    /// <summary>Loads block 0 of <paramref name="modelPath"/> alone and times one-row decode forwards through it (median, ms).</summary>
    public static double Measure(string modelPath, int threads)
    {
        var lease = SharedModel.Acquire(modelPath);
        // The compute owns the lease from here and releases it with the span.
        using var compute = new LayerSpanCompute(lease, 0, 1, new SpanOptions { Threads = threads, KvBudgetTokens = ProbeKvTokens });
        SpanHost.MeasureDecodeMs(compute, repeats: 1); // warm-up: the first forward builds and allocates the graph
        return SpanHost.MeasureDecodeMs(compute, Repeats);
    }

    /// <summary>"model name" from /proc/cpuinfo (x86), else "Model"/"Hardware" (Arm), else the architecture.</summary>
    public static string CpuModelName()
    {
        try
        {
            string? fallback = null;
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
            {
                var colon = line.IndexOf(':');
                if (colon < 0) continue;
                var key = line[..colon].Trim();
                if (key == "model name") return line[(colon + 1)..].Trim();
                if (fallback is null && key is "Model" or "Hardware" or "cpu model") fallback = line[(colon + 1)..].Trim();
            }
            if (!string.IsNullOrEmpty(fallback)) return fallback;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
    }

    private static List<SpeedProbeEntry> ReadCache(string path)
    {
        try
        {
            if (!File.Exists(path)) return [];
            var file = JsonSerializer.Deserialize(File.ReadAllText(path), SpeedProbeJsonContext.Default.SpeedProbeCacheFile);
            var entries = new List<SpeedProbeEntry>();
            if (file?.Entries is null) return entries;
            foreach (var entry in file.Entries)
                if (entry?.ModelId is not null && entry.Machine?.Cpu is not null) entries.Add(entry);
            return entries;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            // A damaged or unreadable cache only costs a probe.
            return [];
        }
    }

    private static void WriteCache(string path, List<SpeedProbeEntry> entries)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            // Write then rename: nodes starting at the same time never read half a file.
            var temporary = $"{path}.{Environment.ProcessId.ToString(CultureInfo.InvariantCulture)}.tmp";
            File.WriteAllText(temporary, JsonSerializer.Serialize(new SpeedProbeCacheFile(entries), SpeedProbeJsonContext.Default.SpeedProbeCacheFile));
            File.Move(temporary, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A read-only home: the figure is still used now, just measured again next time.
        }
    }
}

/// <summary>Which hardware a cached probe figure belongs to.</summary>
public sealed record SpeedProbeMachine(string Cpu, int LogicalCores, int Threads);

internal sealed record SpeedProbeEntry(string ModelId, SpeedProbeMachine Machine, double MsPerLayer, DateTime MeasuredAtUtc);

internal sealed record SpeedProbeCacheFile(List<SpeedProbeEntry> Entries);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, WriteIndented = true)]
[JsonSerializable(typeof(SpeedProbeCacheFile))]
internal sealed partial class SpeedProbeJsonContext : JsonSerializerContext;
