using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Potluck.Gateway.Telemetry;

/// <summary>The gateway's ActivitySource and Meter, both named "Potluck.Gateway".</summary>
public sealed class GatewayTelemetry : IDisposable
{
    public const string Name = "Potluck.Gateway";

    public static readonly ActivitySource Source = new(Name);

    private readonly Meter _meter;
    private long _activeSessions;
    private long _peakActiveSessions;
    private long _preempted;
    private long _queuedRequests;

    public GatewayTelemetry(IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(Name) ?? new Meter(Name);
        Requests = _meter.CreateCounter<long>("potluck.gateway.requests", "{request}", "API requests by endpoint and outcome");
        PromptTokens = _meter.CreateCounter<long>("potluck.gateway.prompt_tokens", "{token}", "Prompt tokens processed");
        CompletionTokens = _meter.CreateCounter<long>("potluck.gateway.completion_tokens", "{token}", "Tokens generated");
        TimeToFirstTokenMs = _meter.CreateHistogram<double>("potluck.gateway.time_to_first_token", "ms", "Request start to first generated token");
        InterTokenMs = _meter.CreateHistogram<double>("potluck.gateway.inter_token_latency", "ms", "Time between generated tokens");
        HopRoundTripMs = _meter.CreateHistogram<double>("potluck.gateway.step_round_trip", "ms", "One step through the whole route and back");
        HopLatencyMs = _meter.CreateHistogram<double>("potluck.gateway.hop_latency", "ms", "Gateway to node round trip (Describe probe), per node");
        Reroutes = _meter.CreateCounter<long>("potluck.gateway.reroutes", "{route}", "Routes re-planned after a stage refused or failed");
        QueueWaitSeconds = _meter.CreateHistogram<double>("potluck.gateway.queue_wait", "s", "Time an admitted request waited for a generation slot (0 when one was free)");
        AdmissionRejections = _meter.CreateCounter<long>("potluck.gateway.admission_rejections", "{request}",
            "Requests turned away because the pool is at capacity, by reason (queue_full, timeout)");
        Admitted = _meter.CreateCounter<long>("potluck.gateway.admitted", "{request}", "Requests that got a generation slot");
        Preemptions = _meter.CreateCounter<long>("potluck.gateway.preemptions", "{session}",
            "Generations that gave their KV back because the pool was full, to re-prefill when room returned");
        _meter.CreateObservableGauge("potluck.gateway.active_sessions", () => Interlocked.Read(ref _activeSessions), "{session}", "Generations in progress");
        _meter.CreateObservableGauge("potluck.gateway.queued_requests", () => Interlocked.Read(ref _queuedRequests), "{request}",
            "Requests waiting for a generation slot (MaxConcurrentSessions)");
    }

    /// <summary>The meter itself: the dashboard's in-process listener (RecentStats) reads this gateway's instruments only.</summary>
    internal Meter Meter => _meter;

    public Counter<long> Requests { get; }
    public Counter<long> PromptTokens { get; }
    public Counter<long> CompletionTokens { get; }
    public Histogram<double> TimeToFirstTokenMs { get; }
    public Histogram<double> InterTokenMs { get; }
    public Histogram<double> HopRoundTripMs { get; }
    public Histogram<double> HopLatencyMs { get; }
    public Counter<long> Reroutes { get; }
    public Histogram<double> QueueWaitSeconds { get; }
    public Counter<long> AdmissionRejections { get; }
    public Counter<long> Admitted { get; }
    public Counter<long> Preemptions { get; }

    public long ActiveSessions => Interlocked.Read(ref _activeSessions);

    public long QueuedRequests => Interlocked.Read(ref _queuedRequests);

    /// <summary>Generations that gave their KV back since the gateway started (see <see cref="Preempted"/>).</summary>
    public long PreemptedGenerations => Interlocked.Read(ref _preempted);

    public void Preempted()
    {
        Interlocked.Increment(ref _preempted);
        Preemptions.Add(1);
    }

    /// <summary>Most generations in progress at once since the gateway started.</summary>
    public long PeakActiveSessions => Interlocked.Read(ref _peakActiveSessions);

    public void SessionStarted()
    {
        var now = Interlocked.Increment(ref _activeSessions);
        for (var peak = Interlocked.Read(ref _peakActiveSessions); now > peak; peak = Interlocked.Read(ref _peakActiveSessions))
            if (Interlocked.CompareExchange(ref _peakActiveSessions, now, peak) == peak) break;
    }
    public void SessionEnded() => Interlocked.Decrement(ref _activeSessions);

    /// <summary>A request starts waiting for a generation slot; <see cref="LeftQueue"/> when it got one or gave up.</summary>
    public void EnteredQueue() => Interlocked.Increment(ref _queuedRequests);
    public void LeftQueue() => Interlocked.Decrement(ref _queuedRequests);

    public void Dispose() => _meter.Dispose();
}
