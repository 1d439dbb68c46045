using System.Threading.Tasks.Sources;

namespace Potluck.Node.Compute;

/// <summary>
/// One session on this stage: its reservation, its closed signal, and a reusable slot for its one
/// outstanding step (a session's steps are sequential, so one slot suffices and steps allocate nothing).
/// </summary>
public sealed class StageSession : IValueTaskSource<int>
{
    private readonly ComputeLoop _loop;
    private readonly CancellationTokenSource _closed = new();
    private ManualResetValueTaskSourceCore<int> _completion = new() { RunContinuationsAsynchronously = true };
    private readonly Lock _attachGate = new();
    private int _busy;
    private int _length;
    private CancellationTokenSource? _attachment;
    private long _detachedSince = -1;

    internal StageSession(ComputeLoop loop, string id, int maxTokens, StageOutputLog? outputLog)
    {
        _loop = loop;
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

    /// <summary>Positions the engine holds for the session, published by the compute thread after each step or rewind.</summary>
    internal int Length => Volatile.Read(ref _length);

    internal float[] Input { get; private set; } = [];
    internal float[] Output { get; private set; } = [];
    internal int PendingTruncate { get; private set; }
    internal int PendingStart { get; private set; }
    internal int PendingRows { get; private set; }
    // The compute loop's scheduling marks (its thread only): picked for this round, and rounds passed over.
    internal bool Chosen { get; set; }
    internal int SkippedRounds { get; set; }
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
        var width = _loop.Width;
        var needed = rows * width;
        if (Input.Length < needed) Input = new float[Math.Max(needed, width)];
        if (Output.Length < needed) Output = new float[Math.Max(needed, width)];
        return Input.AsSpan(0, needed);
    }

    public ReadOnlySpan<float> OutputRows(int rows) => Output.AsSpan(0, rows * _loop.Width);

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
        _loop.Enqueue(this);
        return new ValueTask<int>(this, _completion.Version);
    }

    internal void PublishLength(int length) => Volatile.Write(ref _length, length);

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
