using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Potluck.Node.Telemetry;

/// <summary>The node's ActivitySource and Meter, both named "Potluck.Node".</summary>
public sealed class NodeTelemetry : IDisposable
{
    public const string Name = "Potluck.Node";

    public static readonly ActivitySource Source = new(Name);

    private readonly Meter _meter;

    public NodeTelemetry(IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(Name) ?? new Meter(Name);
        Steps = _meter.CreateCounter<long>("potluck.node.steps", "{step}", "Steps applied by this node's span");
        Rows = _meter.CreateCounter<long>("potluck.node.rows", "{row}", "Hidden-state rows computed");
        BytesIn = _meter.CreateCounter<long>("potluck.node.bytes_in", "By", "Hidden-state payload bytes received");
        BytesOut = _meter.CreateCounter<long>("potluck.node.bytes_out", "By", "Hidden-state payload bytes sent downstream or back");
        StepLatencyMs = _meter.CreateHistogram<double>("potluck.node.step_latency", "ms", "Frame received to output sent, per step");
        ComputeMs = _meter.CreateHistogram<double>("potluck.node.compute_time", "ms", "Span forward time per batch");
        BatchedSessions = _meter.CreateHistogram<int>("potluck.node.batch_sessions", "{session}", "Sessions merged into one forward");
        Rejected = _meter.CreateCounter<long>("potluck.node.rejected_frames", "{frame}", "Frames rejected by validation");
        Replayed = _meter.CreateCounter<long>("potluck.node.replayed_steps", "{step}", "Repeated steps answered from cache");
        RebuildRows = _meter.CreateCounter<long>("potluck.node.rebuild_rows", "{row}", "Kept output rows sent to rebuild a replacement next stage");
        SessionsOpen = _meter.CreateUpDownCounter<long>("potluck.node.sessions", "{session}", "Sessions open on this node");
        DrainTime = _meter.CreateHistogram<double>("potluck.node.drain_time", "s", "Graceful leave: start of the drain to its last session gone");
        DrainEndedSessions = _meter.CreateCounter<long>("potluck.node.drain_ended_sessions", "{session}",
            "Sessions still open at the drain deadline, ended so the gateway re-routes them");
    }

    public Counter<long> Steps { get; }
    public Counter<long> Rows { get; }
    public Counter<long> BytesIn { get; }
    public Counter<long> BytesOut { get; }
    public Histogram<double> StepLatencyMs { get; }
    public Histogram<double> ComputeMs { get; }
    public Histogram<int> BatchedSessions { get; }
    public Counter<long> Rejected { get; }
    public Counter<long> Replayed { get; }
    public Counter<long> RebuildRows { get; }
    public UpDownCounter<long> SessionsOpen { get; }
    public Histogram<double> DrainTime { get; }
    public Counter<long> DrainEndedSessions { get; }

    /// <summary>Parent context from a W3C traceparent carried on the stream; default when absent or bad.</summary>
    public static ActivityContext ParentFrom(string? traceparent, string? tracestate)
    {
        if (!string.IsNullOrEmpty(traceparent) && ActivityContext.TryParse(traceparent, tracestate, out var context))
            return context;
        return default;
    }

    public void Dispose() => _meter.Dispose();
}
