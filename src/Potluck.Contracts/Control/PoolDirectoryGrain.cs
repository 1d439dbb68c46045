using Microsoft.Extensions.Options;

namespace Potluck.Contracts.Control;

public sealed class PoolDirectoryOptions
{
    /// <summary>A shard whose node has not reported for this long is shown unhealthy.</summary>
    public TimeSpan StaleAfter { get; set; } = TimeSpan.FromSeconds(8);
}

/// <summary>
/// Soft-state registry of shards. Lives in Contracts so gateway silos can host it too. Health comes
/// from cluster membership (dead silo → its shards are dropped) and report age (silent node → unhealthy).
/// </summary>
public sealed class PoolDirectoryGrain(IClusterMembershipService membership, IOptions<PoolDirectoryOptions> options) : Grain, IPoolDirectoryGrain
{
    private readonly Dictionary<string, ShardStatus> _shards = new(StringComparer.Ordinal);

    public Task Report(ShardStatus status)
    {
        _shards[status.ShardKey] = status;
        return Task.CompletedTask;
    }

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
        return Task.FromResult(new PoolView(result, now));
    }
}
