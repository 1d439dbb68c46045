using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Potluck.Cluster;
using Potluck.Hosting;
using Potluck.Security;

namespace Potluck.Gateway.Pool;

/// <summary>
/// Revocation on the CA holder: polls revoked.json (which `potluck pool revoke` writes) every <see cref="Period"/>, and
/// on a change (a) refuses the node in every TLS check here at once (the list is the one <see cref="PoolTrust"/>
/// reads) and closes its connections to the pool endpoint, (b) marks its silo dead in Orleans membership
/// (<see cref="IClusterMembershipService.TryKill"/>; the silo reads that and stops), and (c) publishes the list
/// through the pool directory, which drops its shards from routing and refuses its reports; members refresh their
/// own lists from there.
/// </summary>
public sealed class RevocationPublisher(MemberSecurity security, IGrainFactory grains, IClusterMembershipService membership,
    ILogger<RevocationPublisher> log) : BackgroundService
{
    public static readonly TimeSpan Period = TimeSpan.FromSeconds(2);

    /// <summary>Republished this often even without a change: a reactivated directory starts with an empty list.</summary>
    private static readonly TimeSpan RepublishEvery = TimeSpan.FromSeconds(10);

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        var revocations = security.Trust.Revocations;
        var published = DateTime.MinValue;
        IReadOnlySet<string> handled = new HashSet<string>();
        using var timer = new PeriodicTimer(Period);
        do
        {
            try
            {
                revocations.Reload();
            }
            catch (Exception e) when (e is PoolSecurityException or IOException or UnauthorizedAccessException)
            {
                log.LogWarning("Cannot read the revocation list: {Reason}", e.Message);
            }
            var current = revocations.Current;
            var added = current.Where(id => !handled.Contains(id)).ToArray();
            if (added.Length == 0 && DateTime.UtcNow - published < RepublishEvery) continue;
            try
            {
                var directory = grains.GetGrain<IPoolDirectoryGrain>(PoolKeys.Default);
                if (added.Length > 0) await EvictAsync(directory, added, stop);
                await directory.SetRevoked([.. current]).WaitAsync(TimeSpan.FromSeconds(5), stop);
                published = DateTime.UtcNow;
                handled = current;
            }
            catch (Exception e) when (e is TimeoutException or OrleansException)
            {
                log.LogWarning("Could not publish the revocation list yet: {Reason}", e.Message);
            }
        }
        while (await timer.WaitForNextTickAsync(stop));
    }

    /// <summary>Marks the silos of newly revoked nodes dead in membership (they hold shards; their silo address is in the report).</summary>
    private async Task EvictAsync(IPoolDirectoryGrain directory, IReadOnlyList<string> nodeIds, CancellationToken stop)
    {
        var view = await directory.GetView().WaitAsync(TimeSpan.FromSeconds(5), stop);
        foreach (var nodeId in nodeIds)
        {
            var silos = view.Shards.Where(s => s.Status.NodeId == nodeId).Select(s => s.Status.SiloAddress).Distinct().ToArray();
            log.LogWarning("Node {NodeId} is revoked: refusing it in every TLS check, dropping its shards, marking {Count} silo(s) dead", nodeId, silos.Length);
            foreach (var silo in silos)
            {
                try
                {
                    var killed = await membership.TryKill(SiloAddress.FromParsableString(silo)).WaitAsync(TimeSpan.FromSeconds(10), stop);
                    log.LogInformation("Membership entry of revoked node {NodeId} ({Silo}): {Outcome}", nodeId, silo, killed ? "marked dead" : "not changed");
                }
                catch (Exception e) when (e is TimeoutException or OrleansException or FormatException)
                {
                    log.LogWarning("Could not mark the silo {Silo} of revoked node {NodeId} dead: {Reason}", silo, nodeId, e.Message);
                }
            }
        }
    }
}
