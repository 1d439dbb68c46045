namespace Potluck.Cluster;

/// <summary>
/// One loaded span on one node, keyed by <see cref="ShardKeys.For"/> and pinned to that node's silo,
/// so calls reach the process that holds the weights and KV caches.
/// </summary>
[Alias("potluck.IShardGrain")]
public interface IShardGrain : IGrainWithStringKey
{
    [Alias("GetStatus")]
    Task<ShardStatus> GetStatus();

    /// <summary>Reserves KV room ahead of the data-plane open (idempotent per session id).</summary>
    [Alias("ReserveSession")]
    Task<SessionReservation> ReserveSession(string sessionId, int maxTokens);

    /// <summary>
    /// Frees the session's KV on this stage and ends its data-plane streams, which closes it on every
    /// later stage of its route as well. <paramref name="cancelled"/> ends the streams with Cancelled
    /// instead of OK. Returns false when the stage did not hold the session.
    /// </summary>
    [Alias("CloseSession")]
    Task<bool> CloseSession(string sessionId, bool cancelled);
}

/// <summary>
/// The pool view: which shards exist, with their latest status. Soft state rebuilt from the nodes'
/// periodic reports, so it survives its own reactivation elsewhere. Use key <see cref="PoolKeys.Default"/>.
/// </summary>
[Alias("potluck.IPoolDirectoryGrain")]
public interface IPoolDirectoryGrain : IGrainWithStringKey
{
    [Alias("Report")]
    Task Report(ShardStatus status);

    [Alias("Withdraw")]
    Task Withdraw(string shardKey);

    /// <summary>Shards of every model; dead silos' shards are gone, stale ones are unhealthy.</summary>
    [Alias("GetView")]
    Task<PoolView> GetView();

    /// <summary>Records (or replaces, per node id) a node's announcement that it is loading a span.</summary>
    [Alias("AnnounceJoining")]
    Task AnnounceJoining(JoiningNode node);

    /// <summary>Announcements that have neither expired nor been followed by a shard report from that node.</summary>
    [Alias("GetJoining")]
    Task<IReadOnlyList<JoiningNode>> GetJoining();

    /// <summary>
    /// The pool's revoked node ids, published by the CA holder: their reports are refused and their shards dropped;
    /// every member refreshes its revocation list from <see cref="GetRevoked"/>.
    /// </summary>
    [Alias("SetRevoked")]
    Task SetRevoked(IReadOnlyList<string> nodeIds);

    [Alias("GetRevoked")]
    Task<IReadOnlyList<string>> GetRevoked();
}

public static class PoolKeys
{
    public const string Default = "pool";
}

/// <summary>
/// A node that announced a span it is loading (it serves nothing yet). The pool directory keeps it until that
/// node's shard reports or <see cref="ExpiresAtUtc"/> passes; routing never sees it. Positional: never reorder.
/// </summary>
[GenerateSerializer, Immutable, Alias("potluck.JoiningNode")]
public sealed record JoiningNode(string NodeId, string ModelId, int LayerStart, int LayerEnd, string GrpcEndpoint, DateTime AnnouncedAtUtc, DateTime ExpiresAtUtc);
