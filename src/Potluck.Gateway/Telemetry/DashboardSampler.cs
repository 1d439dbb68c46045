using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Potluck.Gateway.Routing;

namespace Potluck.Gateway.Telemetry;

/// <summary>
/// Once a second: closes a sample of the gateway's metrics (<see cref="RecentStats"/>) and compares the pool view
/// with the previous one (<see cref="PoolEvents"/>). What the dashboard's charts and event list read.
/// </summary>
public sealed class DashboardSampler(
    RecentStats stats,
    PoolEvents events,
    PoolMonitor monitor,
    IClusterMembershipService membership,
    ILogger<DashboardSampler> log) : BackgroundService
{
    public static readonly TimeSpan Period = TimeSpan.FromSeconds(1);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Period);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                try
                {
                    Tick(DateTime.UtcNow);
                }
                catch (Exception e)
                {
                    log.LogDebug(e, "Dashboard sample failed");
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    private void Tick(DateTime nowUtc)
    {
        stats.Sample(nowUtc);
        var siloOfShard = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var shard in monitor.RawView.Shards) siloOfShard[shard.Status.ShardKey] = shard.Status.SiloAddress;
        var members = new Dictionary<string, SiloStatus>(StringComparer.Ordinal);
        foreach (var (address, member) in membership.CurrentSnapshot.Members) members[address.ToParsableString()] = member.Status;
        events.Observe(monitor.Current.Stages, siloOfShard, members, nowUtc);
    }
}
