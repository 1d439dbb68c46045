using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Potluck.Gateway.Admission;
using Potluck.Hosting;
using Potluck.Security;
using Potluck.Gateway.Head;
using Potluck.Gateway.Routing;
using Potluck.Gateway.Sessions;
using Potluck.Gateway.Telemetry;
using Potluck.Protocol;

namespace Potluck.Gateway.Streaming;

/// <summary>Starts generations: admission (<see cref="AdmissionQueue"/>: a bounded number at once, a bounded fair queue), session ids and session grains.</summary>
public sealed class GenerationService(
    ModelFrontEnd model,
    PoolMonitor pool,
    MemberChannels channels,
    IGrainFactory grains,
    RunningSessions running,
    GatewayTelemetry telemetry,
    GatewayOptions options,
    MemberSecurity security,
    ILogger<GenerationService> log)
{
    private static readonly TimeSpan RejectionLogPeriod = TimeSpan.FromSeconds(10);

    private readonly AdmissionQueue _admission = new(options.MaxConcurrentSessions, options.MaxQueuedRequests, options.QueueTimeout, telemetry);
    private long _rejectedSinceLog;
    private long _lastRejectionLog;

    /// <summary>This gateway's open sessions per stage, so concurrent requests spread over replicas.</summary>
    internal RouteLoad Load { get; } = new();

    internal ModelFrontEnd Model => model;
    internal PoolMonitor Pool => pool;
    internal MemberChannels Channels => channels;
    internal IGrainFactory Grains => grains;
    internal GatewayTelemetry Telemetry => telemetry;
    internal GatewayOptions Options => options;
    internal ILogger Log => log;

    /// <summary>The pool CA this gateway holds: it signs every open's route ticket.</summary>
    internal PoolAuthority Authority { get; } = security.Authority
        ?? throw new InvalidOperationException("the gateway must hold the pool CA to sign route tickets");

    /// <summary>Who holds and who waits for the generation slots.</summary>
    internal AdmissionQueue Admission => _admission;

    /// <summary>
    /// Admits a generation (waiting in <paramref name="caller"/>'s line for a slot) and returns it; the caller must
    /// dispose it. Cancelling <paramref name="ct"/> or cancelling the session grain stops it. While it waits,
    /// <paramref name="keepAlive"/> (if any) runs every <see cref="GatewayOptions.QueueKeepAliveInterval"/>.
    /// </summary>
    /// <exception cref="PoolAtCapacityException">No slot: the queue is full or the wait timed out.</exception>
    public async Task<(GenerationRun Generation, CancellationTokenSource Cancel)> StartAsync(GenerationRequest request, string sessionId, string caller,
        CancellationToken ct, Func<CancellationToken, Task>? keepAlive = null)
    {
        try
        {
            if (keepAlive is null) await _admission.EnterAsync(caller, ct);
            else await EnterWithKeepAliveAsync(caller, keepAlive, ct);
        }
        catch (PoolAtCapacityException e)
        {
            LogRejection(e);
            throw;
        }
        var admitted = Stopwatch.GetTimestamp();
        var cancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        try
        {
            var grain = grains.GetGrain<ISessionGrain>(sessionId);
            var generation = new GenerationRun(this, request, sessionId, grain) { AdmittedTimestamp = admitted };
            running.Add(sessionId, cancel, generation);
            telemetry.SessionStarted();
            return (generation, cancel);
        }
        catch
        {
            cancel.Dispose();
            _admission.Release(AdmissionQueue.Unused);
            throw;
        }
    }

    /// <summary>Waits for a slot, running <paramref name="keepAlive"/> every interval; a slot won after keepAlive failed is given back.</summary>
    private async Task EnterWithKeepAliveAsync(string caller, Func<CancellationToken, Task> keepAlive, CancellationToken ct)
    {
        using var waitCancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var entering = _admission.EnterAsync(caller, waitCancel.Token);
        if (entering.IsCompleted)
        {
            await entering;
            return;
        }
        var admitted = entering.AsTask();
        Exception? failure = null;
        try
        {
            using var timer = new PeriodicTimer(options.QueueKeepAliveInterval);
            while (await Task.WhenAny(admitted, timer.WaitForNextTickAsync(ct).AsTask()) != admitted)
            {
                ct.ThrowIfCancellationRequested();
                await keepAlive(ct);
            }
        }
        catch (Exception e)
        {
            failure = e;
        }
        if (failure is not null)
        {
            // The client went away while waiting (or writing to it failed): leave the line; a slot won meanwhile goes back.
            await waitCancel.CancelAsync();
            try
            {
                await admitted;
                _admission.Release(AdmissionQueue.Unused);
            }
            catch (Exception e) when (e is OperationCanceledException or PoolAtCapacityException)
            {
            }
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
        await admitted;
    }

    /// <summary>At most one warning per <see cref="RejectionLogPeriod"/> with the count since the last, so a flood does not flood the log.</summary>
    private void LogRejection(PoolAtCapacityException e)
    {
        Interlocked.Increment(ref _rejectedSinceLog);
        var now = Environment.TickCount64;
        var last = Interlocked.Read(ref _lastRejectionLog);
        if (last != 0 && now - last < (long)RejectionLogPeriod.TotalMilliseconds) return;
        if (Interlocked.CompareExchange(ref _lastRejectionLog, now, last) != last) return;
        log.LogWarning("Turned away {Count} request(s) since the last report ({Reason}): {Message}", Interlocked.Exchange(ref _rejectedSinceLog, 0), e.ReasonTag, e.Message);
    }

    internal void Release(GenerationRun generation)
    {
        running.Remove(generation.SessionId);
        telemetry.SessionEnded();
        _admission.Release(Stopwatch.GetElapsedTime(generation.AdmittedTimestamp));
    }
}
