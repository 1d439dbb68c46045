using System.Collections.Concurrent;
using System.Threading.Tasks.Sources;
using Potluck.Inference;
using Potluck.Inference.Engine;

namespace Potluck.Gateway.Head;

/// <summary>
/// One generation's reusable request for logits: its last hidden row in, the next token's logits out. Awaiting it
/// allocates nothing (a reset value-task source), so a decode loop stays allocation-free.
/// </summary>
public sealed class LogitsRequest : IValueTaskSource
{
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };

    public LogitsRequest(int width, int vocabSize)
    {
        Row = new float[width];
        Logits = new float[vocabSize];
    }

    /// <summary>The final hidden state (before the output norm) to compute logits for.</summary>
    public float[] Row { get; }

    /// <summary>Filled with the logits when the awaited task completes.</summary>
    public float[] Logits { get; }

    internal ValueTask Begin()
    {
        _core.Reset();
        return new ValueTask(this, _core.Version);
    }

    internal void Complete() => _core.SetResult(true);

    internal void Fail(Exception error) => _core.SetException(error);

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}

/// <summary>
/// The LM head for every generation whose row is ready at the same moment, as one graph: with a large vocabulary the
/// head is the model's largest matmul, and 16 sessions run it once instead of 16 times. One thread computes; what
/// arrives while it does joins the next batch (as a node's compute loop batches layer steps). A row's logits depend
/// on the batch's row count in the low bits (ggml), so sampled text is reproducible under the same batch composition,
/// as with llama.cpp's server running several slots.
/// </summary>
public sealed class HeadBatcher : IDisposable
{
    /// <summary>Most rows one head graph takes; more wait for the next.</summary>
    public const int MaxRows = 64;

    private readonly ModelHead _head;
    private readonly ConcurrentQueue<LogitsRequest> _queue = new();
    private readonly SemaphoreSlim _queued = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _worker;
    private readonly LogitsRequest[] _batch = new LogitsRequest[MaxRows];
    private float[] _rows = [];
    private float[] _logits = [];
    private long _batches;
    private long _rowsComputed;

    public HeadBatcher(ModelHead head)
    {
        _head = head;
        _worker = new Thread(WorkerLoop) { IsBackground = true, Name = "potluck-gateway-head" };
        _worker.Start();
    }

    /// <summary>Head graphs run so far, and the rows they carried (rows / batches = the mean batch).</summary>
    public (long Batches, long Rows) Counts => (Interlocked.Read(ref _batches), Interlocked.Read(ref _rowsComputed));

    /// <summary>Computes <paramref name="request"/>'s logits with whatever else is ready; one request in flight per <see cref="LogitsRequest"/>.</summary>
    public ValueTask ComputeAsync(LogitsRequest request)
    {
        ObjectDisposedException.ThrowIf(_stop.IsCancellationRequested, this);
        var task = request.Begin();
        _queue.Enqueue(request);
        _queued.Release();
        return task;
    }

    /// <summary>Computes several requests' logits together (they are queued before the head wakes, so they share a graph up to <see cref="MaxRows"/>).</summary>
    public Task ComputeAllAsync(IReadOnlyList<LogitsRequest> requests)
    {
        ObjectDisposedException.ThrowIf(_stop.IsCancellationRequested, this);
        var tasks = new Task[requests.Count];
        for (var i = 0; i < requests.Count; i++)
        {
            tasks[i] = requests[i].Begin().AsTask();
            _queue.Enqueue(requests[i]);
        }
        if (requests.Count > 0) _queued.Release(requests.Count);
        return Task.WhenAll(tasks);
    }

    private void WorkerLoop()
    {
        var token = _stop.Token;
        while (true)
        {
            try
            {
                _queued.Wait(token);
            }
            catch (OperationCanceledException)
            {
                break;
            }
            var count = 0;
            if (_queue.TryDequeue(out var first)) _batch[count++] = first;
            // The permits of further items are consumed here, so each wake-up starts a fresh batch.
            while (count < MaxRows && _queue.TryDequeue(out var next))
            {
                _queued.Wait(0);
                _batch[count++] = next;
            }
            if (count > 0) Run(count);
        }
        while (_queue.TryDequeue(out var left)) left.Fail(new ObjectDisposedException(nameof(HeadBatcher)));
    }

    private void Run(int count)
    {
        var width = _head.Width;
        var vocab = _head.VocabSize;
        try
        {
            if (count == 1)
            {
                _head.Logits(_batch[0].Row, 1, _batch[0].Logits);
            }
            else
            {
                // Buffers only grow; reused for the gateway's lifetime.
                if (_rows.Length < count * width) _rows = new float[MaxRows * width];
                if (_logits.Length < (long)count * vocab) _logits = new float[(long)MaxRows * vocab];
                for (var i = 0; i < count; i++) _batch[i].Row.CopyTo(_rows.AsSpan(i * width, width));
                _head.Logits(_rows.AsSpan(0, count * width), count, _logits.AsSpan(0, count * vocab));
                for (var i = 0; i < count; i++) _logits.AsSpan(i * vocab, vocab).CopyTo(_batch[i].Logits);
            }
            Interlocked.Increment(ref _batches);
            Interlocked.Add(ref _rowsComputed, count);
            for (var i = 0; i < count; i++) _batch[i].Complete();
        }
        catch (EngineException) when (count > 1)
        {
            // One session's bad row (NaN from a peer) must fail that session alone.
            for (var i = 0; i < count; i++) RunAlone(_batch[i]);
        }
        catch (Exception e)
        {
            for (var i = 0; i < count; i++) _batch[i].Fail(e);
        }
        finally
        {
            Array.Clear(_batch, 0, count);
        }
    }

    private void RunAlone(LogitsRequest request)
    {
        try
        {
            _head.Logits(request.Row, 1, request.Logits);
            Interlocked.Increment(ref _batches);
            Interlocked.Increment(ref _rowsComputed);
            request.Complete();
        }
        catch (Exception e)
        {
            request.Fail(e);
        }
    }

    public void Dispose()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        _worker.Join(TimeSpan.FromSeconds(30));
        _stop.Dispose();
        _queued.Dispose();
    }
}
