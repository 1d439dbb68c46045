using Microsoft.Extensions.Logging;
using Potluck.Hosting;
using Potluck.Security;
using Potluck.Gateway.Head;
using Potluck.Gateway.Routing;
using Potluck.Gateway.Sessions;
using Potluck.Gateway.Telemetry;
using Potluck.Protocol;

namespace Potluck.Gateway.Streaming;

/// <summary>Starts generations: admission (a bounded number at once), session ids and session grains.</summary>
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
    private readonly SemaphoreSlim _slots = new(Math.Max(1, options.MaxConcurrentSessions));

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

    /// <summary>
    /// Admits a generation (waiting for a free slot) and returns it; the caller must dispose it. Cancelling
    /// <paramref name="ct"/> or cancelling the session grain stops it.
    /// </summary>
    public async Task<(GenerationRun Generation, CancellationTokenSource Cancel)> StartAsync(GenerationRequest request, string sessionId, CancellationToken ct)
    {
        telemetry.EnteredQueue();
        try
        {
            await _slots.WaitAsync(ct);
        }
        finally
        {
            telemetry.LeftQueue();
        }
        var cancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        try
        {
            var grain = grains.GetGrain<ISessionGrain>(sessionId);
            var generation = new GenerationRun(this, request, sessionId, grain);
            running.Add(sessionId, cancel, generation);
            telemetry.SessionStarted();
            return (generation, cancel);
        }
        catch
        {
            cancel.Dispose();
            _slots.Release();
            throw;
        }
    }

    internal void Release(GenerationRun generation)
    {
        running.Remove(generation.SessionId);
        telemetry.SessionEnded();
        _slots.Release();
    }
}
