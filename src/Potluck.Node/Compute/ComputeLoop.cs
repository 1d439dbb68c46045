using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Potluck.Inference;
using Potluck.Inference.Engine;
using Potluck.Node.Telemetry;
using Potluck.Protocol.Diagnostics;
using Potluck.Cluster;

namespace Potluck.Node.Compute;

/// <summary>
/// The one thread that calls the engine: steps queued by <see cref="StageSession.StepAsync"/> that are ready at the same
/// time run as one <see cref="IStageCompute.Forward"/>. Session changes outside a step (open, close, rewind) take the same
/// compute lock, so a long forward delays them; nothing that only reads status should come here (see
/// <see cref="SessionRegistry"/>'s counters).
/// </summary>
internal sealed class ComputeLoop : IDisposable
{
    private readonly IStageCompute _compute;
    private readonly ILogger _log;
    private readonly NodeTelemetry _telemetry;
    private readonly Lock _computeGate = new();
    private readonly ConcurrentQueue<StageSession> _queue = new();
    private readonly SemaphoreSlim _queued = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _worker;
    private readonly List<StageSession> _batch = [];
    private readonly List<StageSession> _ready = [];
    // Steps dequeued but not yet run, in arrival order.
    private readonly List<StageSession> _waiting = [];
    private SpanSegment[] _segments = new SpanSegment[8];
    private float[] _batchIn = [];
    private float[] _batchOut = [];
    private long _steps;
    private bool _disposed;

    public ComputeLoop(IStageCompute compute, ILogger log, NodeTelemetry telemetry, int maxBatchRows)
    {
        _compute = compute;
        _log = log;
        _telemetry = telemetry;
        MaxBatchRows = maxBatchRows;
        Width = compute.Width;
        IsFinal = compute.IsFinal;
        LayerStart = compute.LayerStart;
        LayerEnd = compute.LayerEnd;
        _worker = new Thread(WorkerLoop) { IsBackground = true, Name = $"potluck-span-{compute.LayerStart}-{compute.LayerEnd}" };
        _worker.Start();
    }

    public int Width { get; }
    public bool IsFinal { get; }
    public int LayerStart { get; }
    public int LayerEnd { get; }
    public int MaxBatchRows { get; }

    /// <summary>Rounds a prompt chunk may be passed over for decode steps before it runs anyway.</summary>
    public const int MaxSkippedRounds = 4;
    public long StepsCompleted => Interlocked.Read(ref _steps);

    /// <summary>Called with the engine's free KV after every change (steps grow sessions block by block); set before the first step.</summary>
    public Action<long>? FreeKvChanged { get; set; }

    private void PublishFreeKv() => FreeKvChanged?.Invoke(_compute.FreeKvTokens);

    /// <summary>Opens the session in the engine (charging its first KV block); returns its length there and the engine's free KV after.</summary>
    public (int Length, long FreeKvTokens) OpenSession(string sessionId, int maxTokens)
    {
        lock (_computeGate)
        {
            _compute.OpenSession(sessionId, maxTokens);
            return (_compute.SessionLength(sessionId), _compute.FreeKvTokens);
        }
    }

    /// <summary>Frees the session's KV in the engine; returns the engine's free KV after.</summary>
    public long CloseSession(string sessionId)
    {
        lock (_computeGate)
        {
            _compute.CloseSession(sessionId);
            return _compute.FreeKvTokens;
        }
    }

    /// <summary>
    /// Keeps the first <paramref name="length"/> positions of the session (KV and output log) when the engine holds at
    /// least that many; false, changing nothing, when it holds fewer.
    /// </summary>
    public bool TryRewind(StageSession session, int length)
    {
        lock (_computeGate)
        {
            if (_compute.SessionLength(session.Id) < length) return false;
            _compute.Truncate(session.Id, length);
            session.OutputLog?.Truncate(length);
            session.PublishLength(length);
            PublishFreeKv();
            return true;
        }
    }

    public void Enqueue(StageSession session)
    {
        _queue.Enqueue(session);
        _queued.Release();
    }

    private void WorkerLoop()
    {
        var token = _stop.Token;
        while (!token.IsCancellationRequested)
        {
            // Steps left over from the last round run without waiting for a new one.
            var permits = 0;
            if (_waiting.Count == 0)
            {
                try
                {
                    _queued.Wait(token);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
                permits = 1;
            }
            while (_queue.TryDequeue(out var next))
            {
                // Each queued step released one permit: consume the ones not already taken by the wait.
                if (permits > 0) permits--;
                else _queued.Wait(0);
                _waiting.Add(next);
            }
            Choose(_batch);
            if (_batch.Count > 0) Execute(_batch);
        }
        // Fail whatever is still waiting so no caller waits forever.
        foreach (var left in _waiting) left.Fail(new ObjectDisposedException(nameof(SpanHost)));
        _waiting.Clear();
        while (_queue.TryDequeue(out var left)) left.Fail(new ObjectDisposedException(nameof(SpanHost)));
    }

    /// <summary>
    /// Decode first: every waiting one-row step (a token of a running stream) joins the batch, then prompt chunks in
    /// arrival order while the batch stays within <see cref="MaxBatchRows"/>, so a burst of long prompts delays each
    /// stream by at most one step. A chunk passed over <see cref="MaxSkippedRounds"/> times goes in regardless.
    /// </summary>
    private void Choose(List<StageSession> batch)
    {
        batch.Clear();
        var rows = 0;
        foreach (var item in _waiting)
        {
            if (item.PendingRows > 1 || rows + item.PendingRows > MaxBatchRows) continue;
            item.Chosen = true;
            batch.Add(item);
            rows += item.PendingRows;
        }
        foreach (var item in _waiting)
        {
            if (item.PendingRows <= 1) continue;
            var overdue = item.SkippedRounds >= MaxSkippedRounds;
            if (batch.Count > 0 && rows + item.PendingRows > MaxBatchRows && !overdue)
            {
                item.SkippedRounds++;
                continue;
            }
            item.Chosen = true;
            batch.Add(item);
            rows += item.PendingRows;
        }
        // Keep the others in arrival order (in place: nothing allocated per round).
        var kept = 0;
        for (var i = 0; i < _waiting.Count; i++)
        {
            var item = _waiting[i];
            if (item.Chosen)
            {
                item.Chosen = false;
                item.SkippedRounds = 0;
            }
            else
            {
                _waiting[kept++] = item;
            }
        }
        _waiting.RemoveRange(kept, _waiting.Count - kept);
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
                    item.PublishLength(length);
                    if (item.PendingStart != length)
                        throw new PositionMismatchException($"step starts at {item.PendingStart} but session '{item.Id}' holds {length} positions on layers {LayerRange.Format(LayerStart, LayerEnd)}");
                    if (item.PendingRows == 0)
                    {
                        item.Complete(0);
                        continue;
                    }
                    // Each step charges its own new KV blocks first: one that finds the budget full fails alone.
                    _compute.Reserve(item.Id, item.PendingStart + item.PendingRows);
                    _ready.Add(item);
                }
                catch (Exception e)
                {
                    item.Fail(e);
                }
            }
            if (_ready.Count == 0)
            {
                PublishFreeKv();
                return;
            }
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
                    item.PublishLength(item.PendingStart + item.PendingRows);
                    item.Complete(segment.OutputRows);
                }
                else
                {
                    ForwardBatch(width);
                }
            }
            catch (Exception e)
            {
                RepublishLengths();
                foreach (var item in _ready) item.Fail(e);
                _log.LogWarning(e, "Forward of {Sessions} sessions on layers {Layers} failed", _ready.Count, LayerRange.Format(LayerStart, LayerEnd));
            }
            PublishFreeKv();
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
            item.PublishLength(item.PendingStart + item.PendingRows);
            item.Complete(rows);
        }
    }

    // A failed forward may have advanced some segments (an engine that validates as it goes): read back what it holds.
    private void RepublishLengths()
    {
        foreach (var item in _ready)
        {
            try
            {
                item.PublishLength(_compute.SessionLength(item.Id));
            }
            catch (EngineException)
            {
                // Closed meanwhile: its length no longer matters.
            }
        }
    }

    /// <summary>Stops the thread (queued steps fail), then disposes the engine once no call is running.</summary>
    public void Stop()
    {
        _stop.Cancel();
        _worker.Join(TimeSpan.FromSeconds(30));
    }

    public void Dispose()
    {
        lock (_computeGate)
        {
            if (_disposed) return;
            _disposed = true;
            _compute.Dispose();
        }
        _stop.Dispose();
        _queued.Dispose();
    }
}
