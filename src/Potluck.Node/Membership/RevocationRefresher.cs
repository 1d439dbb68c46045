using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Potluck.Cluster;
using Potluck.Hosting;

namespace Potluck.Node.Membership;

/// <summary>
/// Keeps this node's revocation list (the one every TLS check here reads) equal to the pool's, read from the pool
/// directory every report period. A node that finds itself revoked stops (exit 4): the pool has removed it.
/// </summary>
public sealed class RevocationRefresher(MemberSecurity security, IGrainFactory grains, TimeSpan period, IHostApplicationLifetime lifetime,
    ILogger<RevocationRefresher> log) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(period);
        while (await timer.WaitForNextTickAsync(stop))
        {
            IReadOnlyList<string> revoked;
            try
            {
                revoked = await grains.GetGrain<IPoolDirectoryGrain>(PoolKeys.Default).GetRevoked().WaitAsync(TimeSpan.FromSeconds(5), stop);
            }
            catch (Exception e) when (e is TimeoutException or OrleansException)
            {
                log.LogDebug("Could not read the pool's revocation list: {Reason}", e.Message);
                continue;
            }
            security.Trust.Revocations.Replace(revoked);
            if (revoked.Contains(security.Identity.NodeId))
            {
                log.LogError("Node {NodeId} was revoked from pool {PoolId}; stopping", security.Identity.NodeId, security.PoolId);
                Environment.ExitCode = ExitCodes.CannotJoin;
                lifetime.StopApplication();
                return;
            }
        }
    }
}
