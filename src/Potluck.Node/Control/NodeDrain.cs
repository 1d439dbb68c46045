using System.Diagnostics;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Potluck.Node.Compute;
using Potluck.Node.Telemetry;

namespace Potluck.Node.Control;

/// <summary>
/// Graceful leave (SIGTERM, Ctrl+C, a host stop): the node stops taking sessions, tells the pool at once that
/// it is draining (so the gateway plans no new route through it), lets open sessions finish for up to
/// <see cref="Timeout"/>, then ends what is left so the gateway re-routes those onto a replica.
/// </summary>
/// <remarks>
/// Runs in <see cref="IHostedLifecycleService.StoppingAsync"/>, which the host calls on every lifecycle service
/// before any hosted service's StopAsync: Kestrel still serves the open streams and the silo is still in the
/// cluster while the drain runs; only afterwards does the reporter withdraw the shard and the silo leave.
/// </remarks>
public sealed class NodeDrain(SpanHost host, ShardReporter reporter, IServer dataPlane, TimeSpan timeout, NodeTelemetry telemetry,
    ILogger<NodeDrain> log) : IHostedLifecycleService
{
    private static readonly TimeSpan ReportTimeout = TimeSpan.FromSeconds(5);

    /// <summary>How long Kestrel may wait for callers to close their connections once every session is over.</summary>
    public static readonly TimeSpan DataPlaneCloseTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Longest the node waits for the sessions in use to finish before ending them.</summary>
    public TimeSpan Timeout { get; } = timeout;

    public async Task StoppingAsync(CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        var inUseAtStart = host.BeginDrain();
        log.LogInformation("Node {NodeId} draining: {Sessions} sessions in use ({Detached} more detached, kept for a resume), " +
            "waiting up to {TimeoutSeconds:F0} s for them to finish", host.NodeId, inUseAtStart, host.OpenSessions - inUseAtStart, Timeout.TotalSeconds);
        await ReportDrainingAsync(cancellationToken);

        var allFinished = await host.WaitForSessionsToFinishAsync(Timeout, cancellationToken);
        var stillInUse = allFinished ? 0 : host.SessionsInUse;
        // Detached sessions cannot be resumed here any more: their gateways re-route them.
        var ended = host.EndRemaining();
        var elapsed = Stopwatch.GetElapsedTime(started);
        telemetry.DrainTime.Record(elapsed.TotalSeconds);
        if (stillInUse > 0)
        {
            telemetry.DrainEndedSessions.Add(stillInUse);
            log.LogWarning("Node {NodeId} drain deadline: ended {Ended} sessions still in use after {ElapsedSeconds:F1} s; the gateway re-routes them",
                host.NodeId, stillInUse, elapsed.TotalSeconds);
        }
        log.LogInformation("Node {NodeId} drained in {ElapsedSeconds:F1} s: {Finished} sessions finished, {Ended} ended at the deadline, {Detached} detached ended",
            host.NodeId, elapsed.TotalSeconds, Math.Max(0, inUseAtStart - stillInUse), stillInUse, Math.Max(0, ended - stillInUse));
        await CloseDataPlaneAsync(cancellationToken);
    }

    // Nothing is left to serve. Kestrel's own stop waits for callers to close their HTTP/2 connections until the
    // whole shutdown times out (a caller holding an ended stream without disposing it measured 20 s), which would
    // leave no time to withdraw the shard and leave the cluster gracefully; stopping it here bounds that wait.
    // The host's later stop of the server finds it stopped.
    private async Task CloseDataPlaneAsync(CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(DataPlaneCloseTimeout);
        try
        {
            await dataPlane.StopAsync(limit.Token);
        }
        catch (OperationCanceledException)
        {
            // Kestrel aborts the connections that are still open when the token fires.
        }
        log.LogDebug("Node {NodeId} data plane closed in {ElapsedSeconds:F1} s", host.NodeId, Stopwatch.GetElapsedTime(started).TotalSeconds);
    }

    // The periodic report would say Draining within a period anyway; this closes the window at once.
    private async Task ReportDrainingAsync(CancellationToken cancellationToken)
    {
        try
        {
            await reporter.ReportNowAsync().WaitAsync(ReportTimeout, cancellationToken);
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            log.LogWarning("Node {NodeId} could not report draining to the pool: {Error}", host.NodeId, e.Message);
        }
        catch (OperationCanceledException)
        {
            log.LogWarning("Node {NodeId} shutdown was cut short before it could report draining", host.NodeId);
        }
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
