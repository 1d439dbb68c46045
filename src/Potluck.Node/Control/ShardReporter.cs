using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Potluck.Cluster;
using Potluck.Cluster.Directory;

namespace Potluck.Node.Control;

/// <summary>
/// Publishes this node's shard to the pool directory every period (soft state: a directory that moved
/// or restarted is refilled within one period) and withdraws it on shutdown.
/// </summary>
public sealed class ShardReporter(IGrainFactory grains, ShardStatusSource status, TimeSpan period, ILogger<ShardReporter> log) : BackgroundService
{
    private IPoolDirectoryGrain Directory => grains.GetGrain<IPoolDirectoryGrain>(PoolKeys.Default);

    /// <summary>Sends one report now (start-up and tests).</summary>
    public Task ReportNowAsync() => Directory.Report(status.Current());

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(period);
        do
        {
            try
            {
                await ReportNowAsync().WaitAsync(TimeSpan.FromSeconds(10), stoppingToken);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (Exception e)
            {
                log.LogWarning("Reporting shard status to the pool failed: {Error}", e.Message);
            }
        } while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false));
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken);
        try
        {
            var current = status.Current();
            await Directory.Withdraw(current.ShardKey).WaitAsync(TimeSpan.FromSeconds(5), cancellationToken);
            log.LogInformation("Withdrew {NodeId}'s layers {Layers} from the pool", current.NodeId, Potluck.Cluster.LayerRange.Format(current.LayerStart, current.LayerEnd));
        }
        catch (Exception e)
        {
            log.LogWarning("Could not withdraw from the pool on shutdown: {Error}", e.Message);
        }
    }
}
