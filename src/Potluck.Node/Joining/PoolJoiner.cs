using System.Net;
using Potluck.Cluster.Joining;
using Potluck.Hosting;
using Potluck.Inference;
using Potluck.Inference.Gguf;

namespace Potluck.Node.Joining;

/// <summary>What joining by URL settled: the options to run with and, when the node chose its span, its capacity and probed speed.</summary>
public sealed record JoinResult(NodeOptions Options, NodeCapacity? Capacity, double? MsPerLayer);

/// <summary>
/// The node's side of joining a pool by its gateway's URL, before the host starts: read the pool (GET /api/join),
/// refuse another model file, take the pool's membership and cluster id, and (without a span) probe this machine's
/// speed and choose the span. Failures carry their exit code: <see cref="CannotJoinException"/> (4) when the pool
/// cannot be reached or joined as configured, <see cref="CannotLoadException"/> (3) when the model or the span is wrong.
/// </summary>
/// <param name="output">Progress lines ("potluck node: ...") for the operator.</param>
/// <param name="errors">Warnings.</param>
/// <param name="probeCacheDirectory">Where speed probes are cached (the CLI passes $POTLUCK_HOME/cache when set).</param>
public sealed class PoolJoiner(TextWriter output, TextWriter errors, string probeCacheDirectory)
{
    /// <summary>
    /// Asks the gateway which pool this is and settles the options NodeHost then runs with; with
    /// <paramref name="chooseSpan"/> the span too.
    /// </summary>
    public async Task<JoinResult> JoinByUrlAsync(Uri gateway, NodeOptions options, ModelInfo info, NodeJoinOptions join, bool chooseSpan,
        CancellationToken ct)
    {
        PoolJoinInfo pool;
        try
        {
            pool = await PoolJoinClient.FetchAsync(gateway, PoolJoinClient.DefaultTimeout, ct);
        }
        catch (PoolJoinException e)
        {
            throw new CannotJoinException(e.Message, e);
        }

        var gatewayIsLocal = IsLoopback(gateway.Host);
        if (!join.AdvertisedHostGiven && !gatewayIsLocal && PoolJoinClient.LocalAddressToward(gateway.Host) is { } local && !IPAddress.IsLoopback(local))
        {
            // The pool must dial this node back: advertise the address that routes to the gateway, not loopback.
            options = options with { AdvertisedHost = local.ToString() };
        }
        if (pool.Model.Id != info.ModelId)
            throw new CannotLoadException(GatewayModelCheck.MismatchMessage(options.ResolvedNodeId, info.ModelId, options.ModelPath,
                GatewayModelCheck.Describe(pool.Model.Id, pool.Model.Name)));

        if (join.ClusterIdGiven && options.ClusterId != pool.ClusterId)
            throw new CannotJoinException($"--cluster-id {options.ClusterId} differs from the pool's cluster id {pool.ClusterId} at {gateway}; leave it out to use the pool's");
        options = options with { ClusterId = pool.ClusterId };
        if (pool.Membership.Kind == JoinMembership.Redis)
        {
            if (string.IsNullOrWhiteSpace(options.RedisConnectionString))
                throw new CannotJoinException($"the pool at {gateway} uses Redis membership: pass --redis HOST:PORT (the Redis its gateway uses) as well");
        }
        else
        {
            if (!string.IsNullOrWhiteSpace(options.RedisConnectionString))
                throw new CannotJoinException($"the pool at {gateway} uses a seed silo ({pool.Membership.Seed}), not Redis: leave out --redis");
            var seed = pool.Membership.Seed!;
            var colon = seed.LastIndexOf(':');
            if (!gatewayIsLocal && colon > 0 && IsLoopback(seed[..colon]))
                throw new CannotJoinException($"the gateway at {gateway} advertises its silo at {seed}, a loopback address other machines cannot reach; " +
                    "start the gateway with --listen 0.0.0.0 --advertise <its LAN address>");
            options = options with { PrimarySiloEndpoint = seed };
        }

        output.WriteLine($"potluck node: joining the pool at {gateway}: {pool.Model.Name} ({pool.Model.Layers} layers, model {pool.Model.Id[..Math.Min(12, pool.Model.Id.Length)]}), " +
            $"{pool.Spans.Count} span(s) held now; membership {(pool.Membership.Kind == JoinMembership.Redis ? "Redis" : "seed " + pool.Membership.Seed)}; this node is {options.AdvertisedHost}");
        if (!chooseSpan) return new JoinResult(options, null, null);

        var kvTokens = options.KvBudgetTokens ?? 4L * info.ContextLength;
        var budget = join.MemoryBudgetBytes ?? NodeCapacity.DetectBudgetBytes();
        var capacity = new NodeCapacity(NodeCapacity.EstimateLayerBytes(info, kvTokens), budget, join.MaxLayers);
        var msPerLayer = ProbeSpeed(options, info);
        SpanChoice choice;
        try
        {
            choice = SpanChooser.Choose(info.LayerCount, pool.Spans, capacity, options.ResolvedNodeId, msPerLayer);
        }
        catch (SpanChoiceException e)
        {
            throw new CannotLoadException(e.Message, e);
        }
        output.WriteLine($"potluck node: chose layers {choice.Start}-{choice.End} ([{choice.Start},{choice.End}) of {info.LayerCount}): {choice.Reason}; " +
            $"needs {FormatBytes(capacity.BytesOf(choice.Start, choice.End))} of {FormatBytes(budget)} " +
            $"{(join.MemoryBudgetBytes is null ? "free" : "(--memory)")}, KV for {kvTokens} tokens included");
        return new JoinResult(options with { LayerStart = choice.Start, LayerEnd = choice.End }, capacity, msPerLayer);
    }

    /// <summary>
    /// Tells the gateway which span this node is about to load, so /api/pool shows it joining and another node choosing
    /// meanwhile counts the span as taken. Best effort: an older or busy gateway only costs that hint.
    /// </summary>
    public async Task AnnounceAsync(Uri gateway, NodeOptions options, ModelInfo info, CancellationToken ct)
    {
        var announcement = new JoinAnnouncement(options.ResolvedNodeId, info.ModelId, options.LayerStart, options.LayerEnd, options.GrpcEndpoint);
        try
        {
            var accepted = await PoolJoinClient.AnnounceAsync(gateway, announcement, TimeSpan.FromSeconds(5), ct);
            output.WriteLine($"potluck node: announced to the gateway as joining with layers {options.LayerStart}-{options.LayerEnd} " +
                $"(listed as {accepted.State} until it serves, at most until {accepted.ExpiresAt:HH:mm:ss} UTC)");
        }
        catch (PoolJoinException e)
        {
            errors.WriteLine($"potluck node: warning: could not announce this node as joining ({e.Message}); loading anyway");
        }
    }

    /// <summary>
    /// This machine's decode time for one block of the model: cached per model and machine, else measured now
    /// (a one-layer span of the real file). Null when the probe cannot run; the choice then assumes a speed.
    /// </summary>
    private double? ProbeSpeed(NodeOptions options, ModelInfo info)
    {
        try
        {
            var probe = SpeedProbe.MeasureOrReuse(options.ModelPath, info.ModelId, options.Threads, probeCacheDirectory);
            var threads = SpeedProbe.ThisMachine(options.Threads).Threads;
            output.WriteLine(probe.FromCache
                ? $"potluck node: speed probe: reused {probe.MsPerLayer:F3} ms per layer for this model on this machine ({threads} threads, measured {probe.MeasuredAtUtc:yyyy-MM-dd HH:mm} UTC; {probe.CachePath})"
                : $"potluck node: speed probe: measured {probe.MsPerLayer:F3} ms per layer (one block, median of {SpeedProbe.Repeats} decode steps, {threads} threads) in {probe.Elapsed.TotalSeconds:F2} s; cached in {probe.CachePath}");
            return probe.MsPerLayer;
        }
        catch (Exception e) when (e is EngineException or IOException or UnauthorizedAccessException)
        {
            errors.WriteLine($"potluck node: warning: speed probe failed ({e.Message}); choosing with an assumed speed");
            return null;
        }
    }

    /// <summary>Binary units, as `potluck model inspect` prints them.</summary>
    public static string FormatBytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double value = bytes;
        var unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return unit == 0 ? $"{bytes} B" : $"{value:F1} {units[unit]}";
    }

    private static bool IsLoopback(string host) =>
        host is "localhost" || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));
}
