using System.Collections.Concurrent;
using System.Diagnostics;
using System.Threading.Tasks.Sources;
using Microsoft.Extensions.Logging;
using Potluck.Protocol.Diagnostics;
using Potluck.Inference;
using Potluck.Inference.Engine;
using Potluck.Node.Telemetry;

namespace Potluck.Node.Compute;

/// <summary>A session was closed (by its stream, the control plane or shutdown) while a step was pending.</summary>
public sealed class SessionClosedException(string sessionId, bool cancelled)
    : Exception($"session '{sessionId}' was {(cancelled ? "cancelled" : "closed")}")
{
    public bool Cancelled { get; } = cancelled;
}

/// <summary>
/// Process-lifetime owner of one stage's compute (weights + KV caches; never grain state). Serializes
/// every engine call on one compute thread and batches steps of different sessions that are ready at
/// the same time into one <see cref="IStageCompute.Forward"/> call.
/// </summary>
public sealed partial class SpanHost : IDisposable
{
    private readonly IStageCompute _compute;
    private readonly ILogger _log;
    private readonly NodeTelemetry _telemetry;
    private readonly Lock _computeGate = new();
    private readonly ConcurrentDictionary<string, StageSession> _sessions = new(StringComparer.Ordinal);
    private readonly ConcurrentQueue<StageSession> _queue = new();
    private readonly SemaphoreSlim _queued = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _worker;
    private readonly List<StageSession> _batch = [];
    private readonly List<StageSession> _ready = [];
    private SpanSegment[] _segments = new SpanSegment[8];
    private float[] _batchIn = [];
    private float[] _batchOut = [];
    private StageSession? _carry;
    private long _steps;
    private readonly Timer _detachedSweep;

    public SpanHost(IStageCompute compute, string nodeId, ILogger<SpanHost> log, NodeTelemetry telemetry,
        int maxRowsPerStep = 512, int maxBatchRows = 512)
    {
        _compute = compute;
        _log = log;
        _telemetry = telemetry;
        NodeId = nodeId;
        MaxRowsPerStep = maxRowsPerStep;
        MaxBatchRows = Math.Max(maxBatchRows, maxRowsPerStep);
        // Outputs for every KV token the node can hold, at F16 (the default wire): enough for every session to be
        // rebuildable unless sessions use the F32 wire at full length.
        OutputLogs = new OutputLogBudget(compute.IsFinal ? 0 : compute.KvBudgetTokens * compute.Width * sizeof(ushort));
        _worker = new Thread(WorkerLoop) { IsBackground = true, Name = $"potluck-span-{compute.LayerStart}-{compute.LayerEnd}" };
        _worker.Start();
        _detachedSweep = new Timer(_ => CloseExpiredDetached(), null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
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
    public long FreeKvTokens { get { lock (_computeGate) return _compute.FreeKvTokens; } }
    public int OpenSessions => _sessions.Count;
    public long StepsCompleted => Interlocked.Read(ref _steps);
    public bool Draining { get; private set; }

    /// <summary>Measured at start-up by <see cref="MeasureDecodeMs"/>; advertised in silo metadata.</summary>
    public double MeasuredMsPerToken { get; init; }

    /// <summary>
    /// How long a session whose stream broke keeps its KV (and output log) waiting for the gateway to resume it
    /// on a repaired route; after that it is freed. A close from the gateway frees it at once.
    /// </summary>
    public TimeSpan DetachedTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Cap on the outputs kept for rebuilding replacement next stages (see <see cref="StageOutputLog"/>).</summary>
    public OutputLogBudget OutputLogs { get; }

    public IReadOnlyCollection<string> SessionIds => (IReadOnlyCollection<string>)_sessions.Keys;

    /// <summary>
    /// Opens (or returns) a session and reserves its KV. Throws the engine's KvBudgetExceededException /
    /// ContextOverflowException when it does not fit.
    /// </summary>
    public StageSession Open(string sessionId, int maxTokens)
    {
        if (Draining) throw new KvBudgetExceededException("node is shutting down and accepts no new sessions");
        lock (_computeGate)
        {
            if (_sessions.TryGetValue(sessionId, out var existing)) return existing;
            return OpenLocked(sessionId, maxTokens);
        }
    }

    private StageSession OpenLocked(string sessionId, int maxTokens)
    {
        _compute.OpenSession(sessionId, maxTokens);
        var log = IsFinal ? null : new StageOutputLog(OutputLogs, maxTokens);
        var session = new StageSession(this, sessionId, maxTokens, log);
        _sessions[sessionId] = session;
        _telemetry.SessionsOpen.Add(1);
        return session;
    }

    /// <summary>
    /// Failover: the session as the repaired route needs it. A session this stage still holds with at least
    /// <paramref name="resumeLength"/> positions is truncated to that length (KV and output log); otherwise the
    /// stage starts it over empty. Returns the session and the positions it holds now (0 or resumeLength).
    /// </summary>
    public StageSession Resume(string sessionId, int maxTokens, int resumeLength, out int length)
    {
        StageSession? stale = null;
        lock (_computeGate)
        {
            if (_sessions.TryGetValue(sessionId, out var existing))
            {
                var held = _compute.SessionLength(sessionId);
                if (held >= resumeLength && existing.MaxTokens == maxTokens && !existing.IsClosed)
                {
                    _compute.Truncate(sessionId, resumeLength);
                    existing.OutputLog?.Truncate(resumeLength);
                    length = resumeLength;
                    return existing;
                }
                // Holds less than every stage applied (or another size): nothing to keep.
                _sessions.TryRemove(sessionId, out stale);
                _compute.CloseSession(sessionId);
            }
        }
        if (stale is not null)
        {
            _telemetry.SessionsOpen.Add(-1);
            stale.MarkClosed(cancelled: true);
        }
        if (Draining) throw new KvBudgetExceededException("node is shutting down and accepts no new sessions");
        lock (_computeGate)
        {
            length = 0;
            return _sessions.TryGetValue(sessionId, out var raced) ? raced : OpenLocked(sessionId, maxTokens);
        }
    }

    public bool TryGet(string sessionId, out StageSession session) => _sessions.TryGetValue(sessionId, out session!);

    /// <summary>Frees the session's KV and signals every stream attached to it.</summary>
    public bool Close(string sessionId, bool cancelled)
    {
        StageSession? session;
        lock (_computeGate)
        {
            if (!_sessions.TryRemove(sessionId, out session)) return false;
            _compute.CloseSession(sessionId);
        }
        _telemetry.SessionsOpen.Add(-1);
        session.MarkClosed(cancelled);
        return true;
    }

    /// <summary>Sessions whose stream broke and that are waiting to be resumed.</summary>
    public int DetachedSessions
    {
        get
        {
            var count = 0;
            foreach (var session in _sessions.Values) if (session.DetachedSinceTicks is not null) count++;
            return count;
        }
    }

    private void CloseExpiredDetached()
    {
        var now = Environment.TickCount64;
        foreach (var session in _sessions.Values)
        {
            if (session.DetachedSinceTicks is { } since && now - since >= DetachedTimeout.TotalMilliseconds && Close(session.Id, cancelled: true))
                _log.LogInformation("Freed session {Session} on layers [{Start},{End}): no resume within {Seconds:F0} s of its stream breaking",
                    session.Id, LayerStart, LayerEnd, DetachedTimeout.TotalSeconds);
        }
    }

    /// <summary>Stops accepting sessions and closes every open one (shutdown).</summary>
    public int CloseAll(bool cancelled)
    {
        Draining = true;
        var closed = 0;
        foreach (var id in _sessions.Keys)
            if (Close(id, cancelled)) closed++;
        return closed;
    }

    public int SessionLength(string sessionId)
    {
        lock (_computeGate) return _compute.SessionLength(sessionId);
    }

    /// <summary>
    /// Times a one-row decode forward at position 0 (one warm-up, then the median of <paramref name="repeats"/>) on a
    /// scratch session, before the node serves anything; advertised as the node's measured speed. Nodes starting
    /// together on one machine measured up to 100x apart with a median of 3 and no warm-up.
    /// </summary>
    public static double MeasureDecodeMs(IStageCompute compute, int repeats = 7)
    {
        const string probe = "__potluck-speed-probe";
        var input = new float[compute.Width];
        var output = new float[compute.Width];
        var rng = new Random(1234);
        for (var i = 0; i < input.Length; i++) input[i] = (float)(rng.NextDouble() - 0.5);
        var times = new double[repeats];
        compute.OpenSession(probe, 4);
        try
        {
            compute.Forward([new SpanSegment(probe, 0, 1, compute.IsFinal)], input, output);
            for (var r = 0; r < repeats; r++)
            {
                compute.Truncate(probe, 0);
                var start = Stopwatch.GetTimestamp();
                compute.Forward([new SpanSegment(probe, 0, 1, compute.IsFinal)], input, output);
                times[r] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            }
        }
        finally
        {
            compute.CloseSession(probe);
        }
        Array.Sort(times);
        return times[repeats / 2];
    }

    internal void Enqueue(StageSession session)
    {
        _queue.Enqueue(session);
        _queued.Release();
    }

    private void WorkerLoop()
    {
        var token = _stop.Token;
        while (!token.IsCancellationRequested)
        {
            try
            {
                _queued.Wait(token);
            }
            catch (OperationCanceledException)
            {
                break;
            }
            // Gather whatever is ready now (up to MaxBatchRows) into one forward.
            _batch.Clear();
            var rows = 0;
            if (_carry is not null)
            {
                _batch.Add(_carry);
                rows = _carry.PendingRows;
                _carry = null;
            }
            else if (_queue.TryDequeue(out var first))
            {
                _batch.Add(first);
                rows = first.PendingRows;
            }
            while (_queue.TryDequeue(out var next))
            {
                _queued.Wait(0); // consume the permit of the item we took early
                if (rows + next.PendingRows > MaxBatchRows)
                {
                    _carry = next;
                    _queued.Release(); // run the carried item on the next round without waiting
                    break;
                }
                _batch.Add(next);
                rows += next.PendingRows;
            }
            if (_batch.Count > 0) Execute(_batch);
        }
        // Fail whatever is still queued so no caller waits forever.
        if (_carry is not null) _carry.Fail(new ObjectDisposedException(nameof(SpanHost)));
        while (_queue.TryDequeue(out var left)) left.Fail(new ObjectDisposedException(nameof(SpanHost)));
    }

    private void Execute(List<StageSession> batch)
    {
        var started = Stopwatch.GetTimestamp();
        StepTimeline.Mark(StepEvent.StageComputeStart, 0);
        lock (_computeGate)
        {
            _ready.Clear();
            foreach (var item in batch)
            {
                try
                {
                    if (item.IsClosed) throw new SessionClosedException(item.Id, item.WasCancelled);
                    if (item.PendingTruncate >= 0) _compute.Truncate(item.Id, item.PendingTruncate);
                    var length = _compute.SessionLength(item.Id);
                    if (item.PendingStart != length)
                        throw new PositionMismatchException($"step starts at {item.PendingStart} but session '{item.Id}' holds {length} positions on layers [{LayerStart},{LayerEnd})");
                    if (item.PendingRows == 0) item.Complete(0);
                    else _ready.Add(item);
                }
                catch (Exception e)
                {
                    item.Fail(e);
                }
            }
            if (_ready.Count == 0) return;
            var width = Width;
            try
            {
                if (_ready.Count == 1)
                {
                    var item = _ready[0];
                    var segment = new SpanSegment(item.Id, item.PendingStart, item.PendingRows, item.PendingLastRowOnly && IsFinal);
                    _compute.Forward(new ReadOnlySpan<SpanSegment>(in segment),
                        item.Input.AsSpan(0, item.PendingRows * width), item.Output.AsSpan(0, segment.OutputRows * width));
                    Interlocked.Increment(ref _steps);
                    item.Complete(segment.OutputRows);
                }
                else
                {
                    ForwardBatch(width);
                }
            }
            catch (Exception e)
            {
                foreach (var item in _ready) item.Fail(e);
                _log.LogWarning(e, "Forward of {Sessions} sessions on layers [{Start},{End}) failed", _ready.Count, LayerStart, LayerEnd);
            }
        }
        StepTimeline.Mark(StepEvent.StageComputeEnd, 0);
        _telemetry.ComputeMs.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
    }

    private void ForwardBatch(int width)
    {
        if (_segments.Length < _ready.Count) _segments = new SpanSegment[_ready.Count * 2];
        int inRows = 0, outRows = 0;
        for (var i = 0; i < _ready.Count; i++)
        {
            var item = _ready[i];
            _segments[i] = new SpanSegment(item.Id, item.PendingStart, item.PendingRows, item.PendingLastRowOnly && IsFinal);
            inRows += item.PendingRows;
            outRows += _segments[i].OutputRows;
        }
        // Buffers only grow; reused for the node's lifetime.
        if (_batchIn.Length < inRows * width) _batchIn = new float[inRows * width];
        if (_batchOut.Length < outRows * width) _batchOut = new float[outRows * width];
        var offset = 0;
        foreach (var item in _ready)
        {
            item.Input.AsSpan(0, item.PendingRows * width).CopyTo(_batchIn.AsSpan(offset));
            offset += item.PendingRows * width;
        }
        _compute.Forward(_segments.AsSpan(0, _ready.Count), _batchIn.AsSpan(0, inRows * width), _batchOut.AsSpan(0, outRows * width));
        _telemetry.BatchedSessions.Record(_ready.Count);
        offset = 0;
        for (var i = 0; i < _ready.Count; i++)
        {
            var item = _ready[i];
            var rows = _segments[i].OutputRows;
            _batchOut.AsSpan(offset, rows * width).CopyTo(item.Output);
            offset += rows * width;
            Interlocked.Increment(ref _steps);
            item.Complete(rows);
        }
    }

    public void Dispose()
    {
        _detachedSweep.Dispose();
        _stop.Cancel();
        _worker.Join(TimeSpan.FromSeconds(30));
        CloseAll(cancelled: true);
        lock (_computeGate) _compute.Dispose();
        _stop.Dispose();
        _queued.Dispose();
    }
}

/// <summary>
/// One session on this stage: its reservation, its closed signal, and a reusable slot for its one
/// outstanding step (a session's steps are sequential, so one slot suffices and steps allocate nothing).
/// </summary>
public sealed class StageSession : IValueTaskSource<int>
{
    private readonly SpanHost _host;
    private readonly CancellationTokenSource _closed = new();
    private ManualResetValueTaskSourceCore<int> _completion = new() { RunContinuationsAsynchronously = true };
    private readonly Lock _attachGate = new();
    private int _busy;
    private CancellationTokenSource? _attachment;
    private long _detachedSince = -1;

    internal StageSession(SpanHost host, string id, int maxTokens, StageOutputLog? outputLog)
    {
        _host = host;
        Id = id;
        MaxTokens = maxTokens;
        OutputLog = outputLog;
    }

    /// <summary>What this stage sent its next stage (null on the final stage).</summary>
    public StageOutputLog? OutputLog { get; }

    /// <summary>Environment.TickCount64 when the session's stream broke; null while a stream holds it.</summary>
    public long? DetachedSinceTicks { get { var since = Interlocked.Read(ref _detachedSince); return since < 0 ? null : since; } }

    public string Id { get; }
    public int MaxTokens { get; }
    public bool IsClosed => _closed.IsCancellationRequested;
    public bool WasCancelled { get; private set; }

    /// <summary>Cancelled when the session is closed from anywhere.</summary>
    public CancellationToken Closed => _closed.Token;

    internal float[] Input { get; private set; } = [];
    internal float[] Output { get; private set; } = [];
    internal int PendingTruncate { get; private set; }
    internal int PendingStart { get; private set; }
    internal int PendingRows { get; private set; }
    internal bool PendingLastRowOnly { get; private set; }

    /// <summary>
    /// Claims the session for one data-plane stream; null while another stream holds it. The returned token
    /// fires when a resuming stream asks to take the session over (<see cref="RequestTakeover"/>).
    /// </summary>
    public CancellationToken? TryAttachStream()
    {
        lock (_attachGate)
        {
            if (_attachment is not null) return null;
            _attachment = new CancellationTokenSource();
            Interlocked.Exchange(ref _detachedSince, -1);
            return _attachment.Token;
        }
    }

    /// <summary>
    /// Asks the stream holding the session to let go: it may not have noticed that its route broke (a hung stage
    /// rather than a dead one). It detaches once its current step is done.
    /// </summary>
    public void RequestTakeover()
    {
        lock (_attachGate) _attachment?.Cancel();
    }

    /// <summary>The stream holding <paramref name="attachment"/> ended without closing the session: keep it for a resume.</summary>
    public void Detach(CancellationToken attachment)
    {
        lock (_attachGate)
        {
            if (_attachment is null || _attachment.Token != attachment) return; // taken over already
            _attachment.Dispose();
            _attachment = null;
            Interlocked.Exchange(ref _detachedSince, Environment.TickCount64);
        }
    }

    /// <summary>Whether a step is still running for the stream that held the session (a takeover waits for it).</summary>
    public bool StepInFlight => Volatile.Read(ref _busy) == 1;

    /// <summary>The input buffer for the next step, at least <paramref name="rows"/> rows.</summary>
    public Span<float> RentInput(int rows)
    {
        var needed = rows * _host.Width;
        if (Input.Length < needed) Input = new float[Math.Max(needed, _host.Width)];
        if (Output.Length < needed) Output = new float[Math.Max(needed, _host.Width)];
        return Input.AsSpan(0, needed);
    }

    public ReadOnlySpan<float> OutputRows(int rows) => Output.AsSpan(0, rows * _host.Width);

    /// <summary>
    /// Runs the rows already written by <see cref="RentInput"/>. Returns the output row count
    /// (1 when last-row-only on the final stage, else <paramref name="rows"/>).
    /// </summary>
    public ValueTask<int> StepAsync(int truncateTo, int startPosition, int rows, bool lastRowOnly)
    {
        if (Interlocked.Exchange(ref _busy, 1) == 1)
            throw new InvalidOperationException($"session '{Id}' already has a step in flight");
        if (rows > 0) RentInput(rows);
        PendingTruncate = truncateTo;
        PendingStart = startPosition;
        PendingRows = rows;
        PendingLastRowOnly = lastRowOnly;
        _completion.Reset();
        _host.Enqueue(this);
        return new ValueTask<int>(this, _completion.Version);
    }

    internal void Complete(int outputRows)
    {
        Volatile.Write(ref _busy, 0);
        _completion.SetResult(outputRows);
    }

    internal void Fail(Exception error)
    {
        Volatile.Write(ref _busy, 0);
        _completion.SetException(error);
    }

    internal void MarkClosed(bool cancelled)
    {
        WasCancelled = cancelled;
        OutputLog?.Release();
        try { _closed.Cancel(); } catch (ObjectDisposedException) { }
    }

    int IValueTaskSource<int>.GetResult(short token) => _completion.GetResult(token);
    ValueTaskSourceStatus IValueTaskSource<int>.GetStatus(short token) => _completion.GetStatus(token);
    void IValueTaskSource<int>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _completion.OnCompleted(continuation, state, token, flags);
}
