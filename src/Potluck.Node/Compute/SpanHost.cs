using Microsoft.Extensions.Logging;
using Potluck.Node.Telemetry;

namespace Potluck.Node.Compute;

/// <summary>
/// Process-lifetime owner of one stage's compute (weights + KV caches; never grain state), and the face the data plane,
/// the control plane and the drain use. Its parts: the <see cref="SessionRegistry"/> (which sessions exist, their KV
/// reservations and the counters status reads see), the <see cref="ComputeLoop"/> (the one thread that calls the engine,
/// batching steps of different sessions into one forward) and a <see cref="StageSession"/> per session.
/// </summary>
public sealed partial class SpanHost : IDisposable
{
    private readonly IStageCompute _compute;
    private readonly ComputeLoop _loop;
    private readonly SessionRegistry _registry;

    public SpanHost(IStageCompute compute, string nodeId, ILogger<SpanHost> log, NodeTelemetry telemetry,
        int maxRowsPerStep = 512, int maxBatchRows = 512)
    {
        _compute = compute;
        NodeId = nodeId;
        MaxRowsPerStep = maxRowsPerStep;
        MaxBatchRows = Math.Max(maxBatchRows, maxRowsPerStep);
        // Outputs for every KV token the node can hold, at F16 (the default wire): enough for every session to be
        // rebuildable unless sessions use the F32 wire at full length.
        OutputLogs = new OutputLogBudget(compute.IsFinal ? 0 : compute.KvBudgetTokens * compute.Width * sizeof(ushort));
        // Read before the loop starts: from then on only the compute thread and the registry's changes call the engine.
        var free = compute.FreeKvTokens;
        _loop = new ComputeLoop(compute, log, telemetry, MaxBatchRows);
        _registry = new SessionRegistry(_loop, free, OutputLogs, telemetry, log);
    }

    public string NodeId { get; }
    public string ModelId => _compute.ModelId;
    public int LayerStart => _compute.LayerStart;
    public int LayerEnd => _compute.LayerEnd;
    public int LayerCount => _compute.LayerCount;
    public int Width => _compute.Width;
    public bool IsFinal => _compute.IsFinal;
    public int ContextLength => _compute.ContextLength;
    public int MaxRowsPerStep { get; }
    public int MaxBatchRows { get; }
    public long KvBudgetTokens => _compute.KvBudgetTokens;
    public long KvBytesPerToken => _compute.KvBytesPerToken;

    /// <summary>Open sessions and free KV, read together; never waits for a running forward.</summary>
    public SpanCounters Counters => _registry.Counters;

    /// <summary>KV tokens not reserved by a session; never waits for a running forward.</summary>
    public long FreeKvTokens => _registry.Counters.FreeKvTokens;
    public int OpenSessions => _registry.Counters.OpenSessions;
    public long StepsCompleted => _loop.StepsCompleted;
    public bool Draining => _registry.Draining;

    /// <summary>Measured at start-up by <see cref="MeasureDecodeMs"/>; advertised in silo metadata.</summary>
    public double MeasuredMsPerToken { get; init; }

    /// <summary>
    /// How long a session whose stream broke keeps its KV (and output log) waiting for the gateway to resume it
    /// on a repaired route; after that it is freed. A close from the gateway frees it at once.
    /// </summary>
    public TimeSpan DetachedTimeout
    {
        get => _registry.DetachedTimeout;
        init => _registry.DetachedTimeout = value;
    }

    /// <summary>Cap on the outputs kept for rebuilding replacement next stages (see <see cref="StageOutputLog"/>).</summary>
    public OutputLogBudget OutputLogs { get; }

    public IReadOnlyCollection<string> SessionIds => _registry.SessionIds;

    /// <summary>
    /// Opens (or returns) a session and reserves its KV. Throws the engine's KvBudgetExceededException /
    /// ContextOverflowException when it does not fit, and NodeDrainingException while the node drains.
    /// </summary>
    public StageSession Open(string sessionId, int maxTokens) => _registry.Open(sessionId, maxTokens);

    /// <summary>
    /// Failover: the session as the repaired route needs it. A session this stage still holds with at least
    /// <paramref name="resumeLength"/> positions is truncated to that length (KV and output log); otherwise the
    /// stage starts it over empty. Returns the session and the positions it holds now (0 or resumeLength).
    /// </summary>
    public StageSession Resume(string sessionId, int maxTokens, int resumeLength, out int length) =>
        _registry.Resume(sessionId, maxTokens, resumeLength, out length);

    public bool TryGet(string sessionId, out StageSession session) => _registry.TryGet(sessionId, out session);

    /// <summary>Frees the session's KV and signals every stream attached to it.</summary>
    public bool Close(string sessionId, bool cancelled) => _registry.Close(sessionId, cancelled);

    /// <summary>Sessions whose stream broke and that are waiting to be resumed.</summary>
    public int DetachedSessions => _registry.CountDetached();

    /// <summary>Stops accepting sessions and closes every open one (shutdown).</summary>
    public int CloseAll(bool cancelled) => _registry.CloseAll(cancelled);

    /// <summary>Positions the session holds (as of its last completed step or rewind); never waits for a running forward.</summary>
    public int SessionLength(string sessionId) => _registry.SessionLength(sessionId);

    /// <inheritdoc cref="DecodeSpeed.MeasureMs"/>
    public static double MeasureDecodeMs(IStageCompute compute, int repeats = 7) => DecodeSpeed.MeasureMs(compute, repeats);

    public void Dispose()
    {
        _registry.Dispose();
        _loop.Stop();
        CloseAll(cancelled: true);
        _loop.Dispose();
    }
}
