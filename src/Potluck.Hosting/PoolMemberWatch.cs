using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Potluck.Cluster;

namespace Potluck.Hosting;

/// <summary>
/// A pool member that dies is one warning line here ("Pool member node-2 (node) at S127.0.0.1:11111:... is dead"), while Orleans'
/// own probe and connection failures about it stay below the default log level (see <see cref="PotluckLogging"/>):
/// a dead peer is an expected fault, and the pool routes around it. A member that leaves on purpose is one info line.
/// </summary>
internal sealed partial class PoolMemberWatch(IClusterMembershipService membership, ISiloMetadataCache metadata, ILocalSiloDetails local,
    ILogger<PoolMemberWatch> log) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        // Only members seen alive here are reported: the table also holds dead entries of earlier runs.
        var seen = new Dictionary<SiloAddress, (SiloStatus Status, string Name)>();
        try
        {
            await foreach (var snapshot in membership.MembershipUpdates.WithCancellation(stoppingToken))
            {
                foreach (var (address, member) in snapshot.Members)
                {
                    if (address.Equals(local.SiloAddress)) continue;
                    var known = seen.TryGetValue(address, out var before);
                    if (member.Status == SiloStatus.Dead)
                    {
                        if (known && before.Status != SiloStatus.Dead)
                        {
                            if (before.Status is SiloStatus.ShuttingDown or SiloStatus.Stopping) LogLeft(log, before.Name, address);
                            else LogDead(log, before.Name, address);
                        }
                        if (known) seen[address] = (SiloStatus.Dead, before.Name);
                        continue;
                    }
                    seen[address] = (member.Status, NameOf(address) ?? (known ? before.Name : $"silo {address.Endpoint}"));
                }
            }
        }
        catch (OperationCanceledException)
        {
            // The host or the silo is stopping: nothing more to watch.
        }
    }

    /// <summary>"node-2 (node)" from the member's silo metadata, read while it is alive (a dead silo's may be gone).</summary>
    private string? NameOf(SiloAddress address)
    {
        var values = metadata.GetSiloMetadata(address).Metadata;
        if (!values.TryGetValue(NodeMetadataKeys.NodeId, out var id)) return null;
        return values.TryGetValue(NodeMetadataKeys.Role, out var role) ? $"{id} ({role})" : id;
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Warning, Message = "Pool member {Member} at {Silo} is dead (it stopped answering); the pool goes on without it")]
    private static partial void LogDead(ILogger logger, string member, SiloAddress silo);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "Pool member {Member} at {Silo} left the pool")]
    private static partial void LogLeft(ILogger logger, string member, SiloAddress silo);
}
