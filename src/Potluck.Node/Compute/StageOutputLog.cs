using Potluck.Protocol.V1;

namespace Potluck.Node.Compute;

/// <summary>
/// Node-wide cap on the bytes every session's <see cref="StageOutputLog"/> may hold together. A log that would
/// pass it is dropped rather than grown: that session then cannot rebuild a replacement next stage from this
/// one, and the gateway falls back to replaying the whole route from the token ids.
/// </summary>
public sealed class OutputLogBudget(long limitBytes)
{
    private long _used;

    public long LimitBytes { get; } = limitBytes;
    public long UsedBytes => Interlocked.Read(ref _used);

    public bool TryReserve(long bytes)
    {
        while (true)
        {
            var used = Interlocked.Read(ref _used);
            if (used + bytes > LimitBytes) return false;
            if (Interlocked.CompareExchange(ref _used, used + bytes, used) == used) return true;
        }
    }

    public void Release(long bytes) => Interlocked.Add(ref _used, -bytes);
}

/// <summary>
/// What a non-final stage sent its next stage for one session: the rows by position, in the wire encoding they
/// were sent in, and the step boundaries they were sent with. When the next stage dies, its replacement rebuilds
/// the session's KV from these rows, in the same step shapes (ggml's results depend on a step's row count, so
/// other shapes could change low bits and, through them, the text).
/// Positions [0, <see cref="Length"/>) are kept in one buffer that grows by doubling (no per-step allocation once
/// grown). A rewind keeps the rows before it; a rewind inside a step keeps that step's first rows as a shorter step.
/// The session's stream appends; a close from the control plane may release it at the same time, hence the lock.
/// </summary>
public sealed class StageOutputLog
{
    private const int MinimumRows = 64;
    private readonly OutputLogBudget _budget;
    private readonly int _maxRows;
    private readonly List<int> _stepEnds = [];
    private readonly Lock _gate = new();
    private byte[] _bytes = [];
    private long _reserved;

    public StageOutputLog(OutputLogBudget budget, int maxRows)
    {
        _budget = budget;
        _maxRows = maxRows;
    }

    /// <summary>Positions logged: rows for [0, Length) are held.</summary>
    public int Length { get; private set; }

    /// <summary>Set by the first append; every row of a session has the same encoding.</summary>
    public HiddenType Dtype { get; private set; }

    public int RowBytes { get; private set; }

    /// <summary>Why the log stopped keeping rows (over the node's budget), or null while it is complete.</summary>
    public string? LostReason { get; private set; }

    /// <summary>Bytes this log holds against the node's budget.</summary>
    public long ReservedBytes => _reserved;

    /// <summary>Records one sent step: <paramref name="rows"/> rows at <paramref name="start"/> in <paramref name="payload"/>.</summary>
    public void Append(int start, int rows, HiddenType dtype, ReadOnlySpan<byte> payload)
    {
        lock (_gate) AppendLocked(start, rows, dtype, payload);
    }

    private void AppendLocked(int start, int rows, HiddenType dtype, ReadOnlySpan<byte> payload)
    {
        if (LostReason is not null || rows == 0) return;
        if (Length == 0 && _stepEnds.Count == 0)
        {
            Dtype = dtype;
            RowBytes = payload.Length / rows;
        }
        if (dtype != Dtype || payload.Length != rows * RowBytes)
        {
            Lose("the session's rows changed encoding");
            return;
        }
        if (start != Length)
        {
            Lose($"a step at position {start} does not follow the {Length} logged positions");
            return;
        }
        var needed = (long)(start + rows) * RowBytes;
        if (needed > _bytes.Length && !Grow(needed)) return;
        payload.CopyTo(_bytes.AsSpan(start * RowBytes));
        Length = start + rows;
        _stepEnds.Add(Length);
    }

    /// <summary>Keeps positions [0, <paramref name="length"/>) (a rewind).</summary>
    public void Truncate(int length)
    {
        lock (_gate) TruncateLocked(length);
    }

    private void TruncateLocked(int length)
    {
        if (length >= Length) return;
        Length = Math.Max(0, length);
        while (_stepEnds.Count > 0 && _stepEnds[^1] > Length) _stepEnds.RemoveAt(_stepEnds.Count - 1);
        if (Length > 0 && (_stepEnds.Count == 0 || _stepEnds[^1] != Length)) _stepEnds.Add(Length);
    }

    /// <summary>
    /// The steps that rebuild positions [<paramref name="from"/>, <see cref="Length"/>) on a next stage, as (start, rows),
    /// or an explanation why this log cannot: it was dropped, or <paramref name="from"/> is not a step boundary.
    /// </summary>
    public string? TryGetSteps(int from, List<(int Start, int Rows)> steps)
    {
        lock (_gate) return TryGetStepsLocked(from, steps);
    }

    private string? TryGetStepsLocked(int from, List<(int Start, int Rows)> steps)
    {
        steps.Clear();
        if (LostReason is not null) return LostReason;
        if (from == Length) return null;
        if (from > Length) return $"the next stage holds {from} positions, this stage logged only {Length}";
        var previous = 0;
        var started = from == 0;
        foreach (var end in _stepEnds)
        {
            if (started) steps.Add((previous, end - previous));
            else if (end == from) started = true;
            previous = end;
        }
        return started ? null : $"position {from} is not a step boundary of the logged outputs";
    }

    /// <summary>The logged bytes of <paramref name="rows"/> rows from <paramref name="start"/>.</summary>
    public ReadOnlyMemory<byte> Rows(int start, int rows)
    {
        lock (_gate) return _bytes.AsMemory(start * RowBytes, rows * RowBytes);
    }

    /// <summary>Gives the log's bytes back to the node's budget (the session closed).</summary>
    public void Release()
    {
        lock (_gate) ReleaseLocked();
    }

    private void ReleaseLocked()
    {
        _bytes = [];
        _stepEnds.Clear();
        Length = 0;
        if (_reserved > 0) _budget.Release(_reserved);
        _reserved = 0;
    }

    private bool Grow(long needed)
    {
        var capacity = Math.Max((long)MinimumRows * RowBytes, (long)_bytes.Length * 2);
        while (capacity < needed) capacity *= 2;
        capacity = Math.Min(capacity, (long)_maxRows * RowBytes);
        if (capacity < needed || capacity > Array.MaxLength)
        {
            Lose($"the session needs more than its {_maxRows} reserved positions");
            return false;
        }
        if (!_budget.TryReserve(capacity - _reserved))
        {
            Lose($"the node's output log budget ({_budget.LimitBytes / 1048576.0:F0} MiB) is full");
            return false;
        }
        var grown = new byte[capacity];
        _bytes.AsSpan(0, Length * RowBytes).CopyTo(grown);
        _bytes = grown;
        _reserved = capacity;
        return true;
    }

    private void Lose(string reason)
    {
        ReleaseLocked();
        LostReason = $"the outputs kept for this session were dropped: {reason}";
    }
}
