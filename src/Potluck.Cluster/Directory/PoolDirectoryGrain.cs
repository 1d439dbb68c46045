using Microsoft.Extensions.Options;

namespace Potluck.Cluster.Directory;

public sealed class PoolDirectoryOptions
{
    /// <summary>
    /// A shard whose node has not reported for this long is shown unhealthy. Longer than the production failure
    /// detection (about 7 s) plus a report period: while a dead silo is not yet declared dead, grain calls whose
    /// directory entry it held wait, reports included, and healthy nodes must not look silent meanwhile.
    /// </summary>
    public TimeSpan StaleAfter { get; set; } = TimeSpan.FromSeconds(15);
}

/// <summary>
/// Soft-state registry of shards. Lives in Contracts so gateway silos can host it too. Health comes
/// from cluster membership (dead silo → its shards are dropped) and report age (silent node → unhealthy).
/// It also keeps nodes that announced a span they are loading (<see cref="JoiningNode"/>) until they report
/// or their announcement expires; those are never part of <see cref="GetView"/>, so routing ignores them.
/// </summary>
[GatewayPreferredPlacement]
public sealed class PoolDirectoryGrain(IClusterMembershipService membership, IOptions<PoolDirectoryOptions> options) : Grain, IPoolDirectoryGrain
{
    private readonly Dictionary<string, ShardStatus> _shards = new(StringComparer.Ordinal);
    // Identifies this activation: a new one starts empty and refills from reports.
    private readonly Guid _epoch = Guid.NewGuid();
    // Node id -> announcement; a node loads one span at a time.
    private readonly Dictionary<string, JoiningNode> _joining = new(StringComparer.Ordinal);

    /// <summary>Most shard entries kept; a report for a new shard beyond this is refused (a flood of fake shards).</summary>
    public const int MaxShards = 4096;
    /// <summary>Most announcements kept at once.</summary>
    public const int MaxJoining = 1024;

    // Revoked node ids (from the CA holder): never listed, never routed to.
    private HashSet<string> _revoked = new(StringComparer.Ordinal);

    /// <exception cref="ArgumentException">The report is malformed (<see cref="ShardValidation"/>), or the directory is full.</exception>
    public Task Report(ShardStatus status)
    {
        if (ShardValidation.Problem(status) is { } problem)
            throw new ArgumentException($"shard report refused: {problem}", nameof(status));
        if (_revoked.Contains(status.NodeId)) return Task.CompletedTask;
        var key = status.ShardKey;
        if (!_shards.ContainsKey(key) && _shards.Count >= MaxShards)
            throw new ArgumentException($"shard report refused: the pool directory already holds {MaxShards} shards", nameof(status));
        _shards[key] = status;
        // The node is serving now: its announcement has done its job.
        _joining.Remove(status.NodeId);
        return Task.CompletedTask;
    }

    public Task AnnounceJoining(JoiningNode node)
    {
        ArgumentNullException.ThrowIfNull(node);
        var problem = ShardValidation.NodeIdProblem(node.NodeId) ?? ShardValidation.EndpointProblem(node.GrpcEndpoint)
            ?? (string.IsNullOrEmpty(node.ModelId) || node.ModelId.Length > ShardValidation.MaxIdLength ? "bad model id" : null)
            ?? (node.LayerStart < 0 || node.LayerStart >= node.LayerEnd || node.LayerEnd > ShardValidation.MaxLayers
                ? $"layers [{node.LayerStart}, {node.LayerEnd}) are not in order" : null);
        if (problem is not null) throw new ArgumentException($"announcement refused: {problem}", nameof(node));
        if (_revoked.Contains(node.NodeId)) return Task.CompletedTask;
        if (!_joining.ContainsKey(node.NodeId))
        {
            if (_joining.Count >= MaxJoining) _ = GetJoining(); // drop expired ones first
            if (_joining.Count >= MaxJoining)
                throw new ArgumentException($"announcement refused: {MaxJoining} nodes are already joining", nameof(node));
        }
        _joining[node.NodeId] = node;
        return Task.CompletedTask;
    }

    public Task<IReadOnlyList<JoiningNode>> GetJoining()
    {
        var now = DateTime.UtcNow;
        var result = new List<JoiningNode>(_joining.Count);
        List<string>? expired = null;
        foreach (var (nodeId, node) in _joining)
        {
            if (node.ExpiresAtUtc <= now) (expired ??= []).Add(nodeId);
            else result.Add(node);
        }
        if (expired is not null)
            foreach (var nodeId in expired) _joining.Remove(nodeId);
        result.Sort((a, b) => string.CompareOrdinal(a.NodeId, b.NodeId));
        return Task.FromResult<IReadOnlyList<JoiningNode>>(result);
    }

    public Task SetRevoked(IReadOnlyList<string> nodeIds)
    {
        _revoked = new HashSet<string>(nodeIds, StringComparer.Ordinal);
        List<string>? dropped = null;
        foreach (var (key, status) in _shards)
            if (_revoked.Contains(status.NodeId)) (dropped ??= []).Add(key);
        if (dropped is not null)
            foreach (var key in dropped) _shards.Remove(key);
        foreach (var nodeId in _revoked) _joining.Remove(nodeId);
        return Task.CompletedTask;
    }

    public Task<IReadOnlyList<string>> GetRevoked() => Task.FromResult<IReadOnlyList<string>>([.. _revoked.Order(StringComparer.Ordinal)]);

    public Task Withdraw(string shardKey)
    {
        _shards.Remove(shardKey);
        return Task.CompletedTask;
    }

    public Task<PoolView> GetView()
    {
        var now = DateTime.UtcNow;
        var members = new Dictionary<string, SiloStatus>(StringComparer.Ordinal);
        foreach (var (address, member) in membership.CurrentSnapshot.Members)
            members[address.ToParsableString()] = member.Status;

        var result = new List<PoolShard>(_shards.Count);
        List<string>? gone = null;
        foreach (var (key, status) in _shards)
        {
            members.TryGetValue(status.SiloAddress, out var siloStatus);
            if (siloStatus == SiloStatus.Dead)
            {
                (gone ??= []).Add(key);
                continue;
            }
            string? problem = null;
            var age = now - status.ReportedAtUtc;
            if (siloStatus != SiloStatus.Active) problem = $"silo is {siloStatus}";
            else if (age > options.Value.StaleAfter) problem = $"no report for {age.TotalSeconds:F1} s";
            else if (status.Draining) problem = "draining";
            result.Add(new PoolShard(status, problem is null, problem));
        }
        if (gone is not null)
            foreach (var key in gone) _shards.Remove(key);
        result.Sort((a, b) => string.CompareOrdinal(a.Status.ShardKey, b.Status.ShardKey));
        return Task.FromResult(new PoolView(result, now, _epoch));
    }
}
