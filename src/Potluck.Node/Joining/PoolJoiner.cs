using System.Net;
using Potluck.Cluster;
using Potluck.Cluster.Joining;
using Potluck.Hosting;
using Potluck.Inference;
using Potluck.Inference.Gguf;
using Potluck.Security;

namespace Potluck.Node.Joining;

/// <summary>
/// What joining by URL settled: the options to run with, the pool endpoint and this node's credential (to announce
/// and re-read the pool with), and, when the node chose its span, its capacity and probed speed.
/// </summary>
public sealed record JoinResult(NodeOptions Options, NodeCapacity? Capacity, double? MsPerLayer)
{
    public Uri? PoolUrl { get; init; }
    public MemberCredential? Credential { get; init; }
}

/// <summary>
/// The node's side of joining a pool by its gateway's URL, before the host starts: read the public join document
/// (GET /api/join: the model and the pool endpoint), refuse another model file, get this node's certificate (held
/// already, issued from this machine's pool directory, or redeemed with an invite token over TLS pinned to the
/// token's CA), and only then read the pool itself over mutual TLS (cluster id, membership, spans); without a span,
/// probe this machine's speed and choose one. Failures carry their exit code: <see cref="CannotJoinException"/> (4)
/// when the pool cannot be reached or joined as configured, <see cref="CannotLoadException"/> (3) when the model or
/// the span is wrong.
/// </summary>
/// <param name="output">Progress lines ("potluck node: ...") for the operator.</param>
/// <param name="errors">Warnings.</param>
/// <param name="probeCacheDirectory">Where speed probes are cached (the CLI passes $POTLUCK_HOME/cache when set).</param>
public sealed class PoolJoiner(TextWriter output, TextWriter errors, string probeCacheDirectory)
{
    /// <summary>
    /// Asks the gateway which pool this is and settles the options NodeHost then runs with; with
    /// <paramref name="chooseSpan"/> the span too. <paramref name="tokenText"/> is the invite, needed only when this
    /// node holds no certificate of the pool yet.
    /// </summary>
    public async Task<JoinResult> JoinByUrlAsync(Uri gateway, NodeOptions options, ModelInfo info, NodeJoinOptions join, bool chooseSpan,
        CancellationToken ct, string? tokenText = null)
    {
        JoinToken? token = null;
        if (tokenText is not null)
        {
            try
            {
                token = JoinToken.Parse(tokenText);
            }
            catch (PoolSecurityException e)
            {
                throw new CannotJoinException(e.Message, e);
            }
        }
        PublicJoinInfo published;
        try
        {
            published = await PoolJoinClient.FetchPublicAsync(gateway, PoolJoinClient.DefaultTimeout, ct);
        }
        catch (PoolJoinException e)
        {
            throw new CannotJoinException(e.Message, e);
        }
        if (published.Model.Id != info.ModelId)
            throw new CannotLoadException(GatewayModelCheck.MismatchMessage(options.NodeId ?? "", info.ModelId, options.ModelPath,
                GatewayModelCheck.Describe(published.Model.Id, published.Model.Name)));
        var poolUrl = new Uri(published.PoolUrl);
        if (!join.AdvertisedHostGiven && !IsLoopback(gateway.Host) && PoolJoinClient.LocalAddressToward(gateway.Host) is { } local && !IPAddress.IsLoopback(local))
        {
            // The pool must dial this node back: advertise the address that routes to the gateway, not loopback
            // (before the node id is settled: the default id names the advertised host).
            options = options with { AdvertisedHost = local.ToString() };
        }

        var poolId = options.ClusterId;
        if (token is not null)
        {
            if (join.ClusterIdGiven && !token.PoolId.Equals(options.ClusterId, StringComparison.OrdinalIgnoreCase))
                throw new CannotJoinException($"--cluster-id {options.ClusterId} differs from the pool the token is for ({token.PoolId}); leave it out");
            poolId = token.PoolId;
        }
        if (options.NodeId is null)
        {
            // A node's id is its certificate's (a restart without --node-id is the node that enrolled), else a free
            // HOSTNAME-N: two nodes on one machine never share one.
            try
            {
                options = options with { NodeId = Hosting.NodeIdClaim.Claim(options.Security, poolId) };
            }
            catch (IOException e)
            {
                throw new CannotJoinException($"cannot claim a node id: {e.Message}", e);
            }
        }
        var credential = await CredentialAsync(options, poolId, token, published, poolUrl, ct);

        PoolJoinInfo pool;
        try
        {
            pool = await PoolJoinClient.FetchAsync(poolUrl, credential, PoolJoinClient.DefaultTimeout, ct);
        }
        catch (Exception e) when (e is PoolJoinException or PoolRefusedException)
        {
            credential.Dispose();
            throw new CannotJoinException(e.Message, e);
        }
        if (pool.Model.Id != info.ModelId)
            throw new CannotLoadException(GatewayModelCheck.MismatchMessage(options.ResolvedNodeId, info.ModelId, options.ModelPath,
                GatewayModelCheck.Describe(pool.Model.Id, pool.Model.Name)));
        if (!pool.ClusterId.Equals(credential.Identity.PoolId, StringComparison.OrdinalIgnoreCase))
        {
            credential.Dispose();
            throw new CannotJoinException($"the gateway at {gateway} runs cluster {pool.ClusterId}, but this node's certificate is for pool {credential.Identity.PoolId}");
        }
        var result = Settle(gateway, options, info, join, chooseSpan, pool);
        return result with { PoolUrl = poolUrl, Credential = credential };
    }

    /// <summary>This node's certificate: held, issued from this machine's pool directory, or redeemed with the token (then saved).</summary>
    private async Task<MemberCredential> CredentialAsync(NodeOptions options, string poolId, JoinToken? token, PublicJoinInfo published, Uri poolUrl,
        CancellationToken ct)
    {
        var nodeId = options.ResolvedNodeId;
        if (PoolAdmission.HasLocalCredential(options.Security, poolId, nodeId))
        {
            if (token is not null)
                output.WriteLine($"potluck node: {nodeId} already holds a certificate of pool {poolId}; the token is not used");
            try
            {
                return MemberSecurity.ForMember(options.Security, poolId, nodeId).Credential.Current;
            }
            catch (ConfigurationUsageException e)
            {
                throw new CannotJoinException(e.Message, e);
            }
        }
        if (token is null)
            throw new CannotJoinException($"node {nodeId} holds no certificate of pool {poolId} " +
                $"(looked in {options.Security.IdentityDirectoryFor(poolId, nodeId)}); join with an invite: " +
                "`potluck node --join URL --token TOKEN` (the pool operator prints one with `potluck pool invite`)");
        if (!PoolIdentity.IsValidId(nodeId)) throw new CannotJoinException($"node id '{nodeId}' is not valid: {PoolIdentity.IdRule}");
        // Pin first: nothing (not even the token) goes to a gateway whose CA is not the token's.
        var authority = PoolPinning.PinnedAuthority(published.PoolCa, token.AuthorityFingerprint, out var reason)
            ?? throw new CannotJoinException($"refusing to enroll at {poolUrl}: {reason}");
        MemberCredential credential;
        try
        {
            credential = await PoolJoinClient.EnrollAsync(poolUrl, authority, token, nodeId, PoolJoinClient.DefaultTimeout, ct);
        }
        catch (PoolRefusedException e)
        {
            throw new CannotJoinException($"the gateway at {poolUrl} refused the token: {e.Message}", e);
        }
        catch (PoolJoinException e)
        {
            throw new CannotJoinException(e.Message, e);
        }
        finally
        {
            authority.Dispose();
        }
        PoolAdmission.Save(options.Security, credential, poolUrl);
        output.WriteLine($"potluck node: enrolled as {credential.Identity} (certificate valid until {credential.NotAfter:yyyy-MM-dd HH:mm} UTC, " +
            $"saved in {options.Security.IdentityDirectoryFor(poolId, nodeId)})");
        return credential;
    }

    private JoinResult Settle(Uri gateway, NodeOptions options, ModelInfo info, NodeJoinOptions join, bool chooseSpan, PoolJoinInfo pool)
    {
        var gatewayIsLocal = IsLoopback(gateway.Host);
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
        output.WriteLine($"potluck node: chose layers {LayerRange.Format(choice.Start, choice.End)} of {info.LayerCount} (--layers {LayerRange.Input(choice.Start, choice.End)}): {choice.Reason}; " +
            $"needs {FormatBytes(capacity.BytesOf(choice.Start, choice.End))} of {FormatBytes(budget)} " +
            $"{(join.MemoryBudgetBytes is null ? "free" : "(--memory)")}, KV for {kvTokens} tokens included");
        return new JoinResult(options with { LayerStart = choice.Start, LayerEnd = choice.End }, capacity, msPerLayer);
    }

    /// <summary>
    /// Tells the gateway which span this node is about to load, so /api/pool shows it joining and another node choosing
    /// meanwhile counts the span as taken. Best effort: an older or busy gateway only costs that hint.
    /// </summary>
    public async Task AnnounceAsync(Uri poolUrl, MemberCredential credential, NodeOptions options, ModelInfo info, CancellationToken ct)
    {
        var announcement = new JoinAnnouncement(options.ResolvedNodeId, info.ModelId, options.LayerStart, options.LayerEnd, options.GrpcEndpoint);
        try
        {
            var accepted = await PoolJoinClient.AnnounceAsync(poolUrl, credential, announcement, TimeSpan.FromSeconds(5), ct);
            output.WriteLine($"potluck node: announced to the gateway as {options.ResolvedNodeId} joining with layers {LayerRange.Format(options.LayerStart, options.LayerEnd)} " +
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
