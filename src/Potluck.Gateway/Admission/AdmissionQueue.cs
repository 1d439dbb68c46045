using System.Globalization;
using Potluck.Gateway.Telemetry;

namespace Potluck.Gateway.Admission;

/// <summary>
/// Bounded, fair admission to the generation slots. <see cref="Slots"/> requests hold a slot at once; the rest wait,
/// at most <see cref="MaxQueued"/> of them and for at most <see cref="Timeout"/>. Waiters are served first in, first out
/// within one caller (API key) and round-robin between callers, so one key flooding the gateway delays the others by
/// at most one turn per slot. A released slot goes straight to the next waiter (no barging by new arrivals); a waiter
/// whose token fires leaves at once without taking a slot. Thread-safe; the lock is never held while awaiting, and
/// admitting with a free slot allocates nothing.
/// </summary>
public sealed class AdmissionQueue
{
    /// <summary>Assumed slot hold time until the first generation has finished, for Retry-After.</summary>
    public static readonly TimeSpan DefaultHoldTime = TimeSpan.FromSeconds(5);

    /// <summary>Retry-After is clamped to this range.</summary>
    public static readonly TimeSpan MinRetryAfter = TimeSpan.FromSeconds(1), MaxRetryAfter = TimeSpan.FromSeconds(60);

    /// <summary>The hold time of a slot given back without being used: it leaves the Retry-After estimate alone.</summary>
    public static readonly TimeSpan Unused = TimeSpan.MinValue;

    // Weight of the newest hold time in the running mean: recent load matters, one odd request does not.
    private const double HoldTimeWeight = 0.2;

    private readonly Lock _gate = new();
    // The callers that have waiters, each with its own FIFO line; a line leaves the map when it empties.
    private readonly Dictionary<string, CallerLine> _lines = new(StringComparer.Ordinal);
    private readonly GatewayTelemetry? _telemetry;
    private readonly TimeProvider _time;
    // The line served next, in a ring of the non-empty lines; null when nobody waits.
    private CallerLine? _turn;
    private int _free;
    private int _waiting;
    private double _meanHoldSeconds;

    public AdmissionQueue(int slots, int maxQueued, TimeSpan timeout, GatewayTelemetry? telemetry = null, TimeProvider? time = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(slots, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(maxQueued);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(timeout, TimeSpan.Zero);
        Slots = slots;
        MaxQueued = maxQueued;
        Timeout = timeout;
        _telemetry = telemetry;
        _time = time ?? TimeProvider.System;
        _free = slots;
        _meanHoldSeconds = DefaultHoldTime.TotalSeconds;
    }

    public int Slots { get; }
    public int MaxQueued { get; }
    public TimeSpan Timeout { get; }

    /// <summary>Slots held now.</summary>
    public int Running
    {
        get { lock (_gate) return Slots - _free; }
    }

    /// <summary>Requests waiting for a slot now.</summary>
    public int Waiting
    {
        get { lock (_gate) return _waiting; }
    }

    /// <summary>
    /// Completes when <paramref name="caller"/> holds a slot; the caller then owes one <see cref="Release"/>.
    /// </summary>
    /// <exception cref="PoolAtCapacityException">The queue is full (at once) or the wait passed <see cref="Timeout"/>.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="ct"/> fired while waiting; no slot is held.</exception>
    public ValueTask EnterAsync(string caller, CancellationToken ct)
    {
        if (ct.IsCancellationRequested) return ValueTask.FromCanceled(ct);
        Waiter waiter;
        PoolAtCapacityException? full = null;
        var admitted = false;
        lock (_gate)
        {
            if (_free > 0)
            {
                // Waiters exist only while no slot is free (Release hands slots over), so this never jumps the line.
                _free--;
                admitted = true;
                waiter = null!;
            }
            else if (_waiting >= MaxQueued)
            {
                full = new PoolAtCapacityException(
                    $"The pool is at capacity: {Generations(Slots - _free)} running and {Requests(_waiting)} waiting; retry after {Seconds(RetryAfterLocked())} s.",
                    RetryAfterLocked(), AdmissionRejection.QueueFull);
                waiter = null!;
            }
            else
            {
                waiter = new Waiter(this, _time.GetTimestamp());
                Enqueue(caller, waiter);
            }
        }
        if (admitted)
        {
            Admitted(TimeSpan.Zero);
            return ValueTask.CompletedTask;
        }
        if (full is not null)
        {
            Rejected(full);
            return ValueTask.FromException(full);
        }
        return WaitAsync(waiter, ct);
    }

    /// <summary>
    /// Gives back a slot that was held for <paramref name="held"/> (it feeds the Retry-After estimate; <see cref="Unused"/>
    /// for a slot given back before any generation ran): the longest-waiting request of the next caller in turn gets
    /// it, or it becomes free.
    /// </summary>
    public void Release(TimeSpan held)
    {
        Waiter? next;
        lock (_gate)
        {
            if (held >= TimeSpan.Zero)
                _meanHoldSeconds += HoldTimeWeight * (held.TotalSeconds - _meanHoldSeconds);
            next = _turn is null ? null : TakeNext();
            if (next is null)
            {
                if (_free >= Slots) throw new InvalidOperationException("a slot was released that was never entered");
                _free++;
            }
        }
        if (next is null) return;
        _telemetry?.LeftQueue();
        Admitted(_time.GetElapsedTime(next.EnqueuedAt));
        // Removed from its line under the lock, so nothing else completes it.
        next.TrySetResult();
    }

    /// <summary>The Retry-After a rejection would carry now.</summary>
    public TimeSpan RetryAfter
    {
        get { lock (_gate) return RetryAfterLocked(); }
    }

    private async ValueTask WaitAsync(Waiter waiter, CancellationToken ct)
    {
        // Callbacks may run before the fields are set (a token that fires now): they only need the waiter itself.
        var registration = ct.UnsafeRegister(static (state, token) => ((Waiter)state!).Owner.Abandon((Waiter)state!, token), waiter);
        var timer = _time.CreateTimer(static state => ((Waiter)state!).Owner.Expire((Waiter)state!), waiter, Timeout, System.Threading.Timeout.InfiniteTimeSpan);
        try
        {
            await waiter.Task.ConfigureAwait(false);
        }
        finally
        {
            await registration.DisposeAsync().ConfigureAwait(false);
            await timer.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>The waiter's token fired: it leaves its line, unless it was admitted first.</summary>
    private void Abandon(Waiter waiter, CancellationToken token)
    {
        lock (_gate)
        {
            if (!waiter.Queued) return;
            Remove(waiter);
        }
        _telemetry?.LeftQueue();
        waiter.TrySetCanceled(token);
    }

    /// <summary>The waiter's time is up: it leaves its line with a rejection, unless it was admitted first.</summary>
    private void Expire(Waiter waiter)
    {
        PoolAtCapacityException rejection;
        lock (_gate)
        {
            if (!waiter.Queued) return;
            Remove(waiter);
            var retry = RetryAfterLocked();
            rejection = new PoolAtCapacityException(
                $"The pool is at capacity: no generation slot came free within {Seconds(Timeout)} s ({Generations(Slots - _free)} running, " +
                $"{Requests(_waiting)} still waiting); retry after {Seconds(retry)} s.", retry, AdmissionRejection.Timeout);
        }
        _telemetry?.LeftQueue();
        Rejected(rejection);
        waiter.TrySetException(rejection);
    }

    private void Enqueue(string caller, Waiter waiter)
    {
        if (!_lines.TryGetValue(caller, out var line))
        {
            line = new CallerLine(caller);
            _lines.Add(caller, line);
            // A new caller joins at the end of the current round: after every caller already waiting, once each.
            if (_turn is null)
            {
                line.NextLine = line.PreviousLine = line;
                _turn = line;
            }
            else
            {
                line.NextLine = _turn;
                line.PreviousLine = _turn.PreviousLine;
                _turn.PreviousLine!.NextLine = line;
                _turn.PreviousLine = line;
            }
        }
        waiter.Line = line;
        waiter.Previous = line.Tail;
        if (line.Tail is null) line.Head = waiter;
        else line.Tail.Next = waiter;
        line.Tail = waiter;
        waiter.Queued = true;
        _waiting++;
        // Counted under the lock, so the gauge never sees a waiter leave before it entered.
        _telemetry?.EnteredQueue();
    }

    /// <summary>The head of the line in turn; the turn passes to the next caller.</summary>
    private Waiter TakeNext()
    {
        var line = _turn!;
        var waiter = line.Head!;
        var following = line.NextLine;
        Remove(waiter);
        // Remove moved the turn on if the line emptied; otherwise the next caller is served next.
        if (_turn == line) _turn = following;
        return waiter;
    }

    private void Remove(Waiter waiter)
    {
        var line = waiter.Line!;
        if (waiter.Previous is null) line.Head = waiter.Next;
        else waiter.Previous.Next = waiter.Next;
        if (waiter.Next is null) line.Tail = waiter.Previous;
        else waiter.Next.Previous = waiter.Previous;
        waiter.Previous = waiter.Next = null;
        waiter.Queued = false;
        _waiting--;
        if (line.Head is not null) return;
        _lines.Remove(line.Caller);
        if (line.NextLine == line)
        {
            _turn = null;
        }
        else
        {
            line.PreviousLine!.NextLine = line.NextLine;
            line.NextLine!.PreviousLine = line.PreviousLine;
            if (_turn == line) _turn = line.NextLine;
        }
        line.NextLine = line.PreviousLine = null;
    }

    /// <summary>About when a request arriving now would get a slot: the mean hold time for each round of the slots ahead of it.</summary>
    private TimeSpan RetryAfterLocked()
    {
        var seconds = Math.Ceiling(_meanHoldSeconds * (_waiting + 1) / Slots);
        return TimeSpan.FromSeconds(Math.Clamp(double.IsFinite(seconds) ? seconds : MaxRetryAfter.TotalSeconds, MinRetryAfter.TotalSeconds, MaxRetryAfter.TotalSeconds));
    }

    private void Admitted(TimeSpan waited)
    {
        if (_telemetry is null) return;
        _telemetry.Admitted.Add(1);
        _telemetry.QueueWaitSeconds.Record(waited.TotalSeconds);
    }

    private void Rejected(PoolAtCapacityException rejection) =>
        _telemetry?.AdmissionRejections.Add(1, new KeyValuePair<string, object?>("reason", rejection.ReasonTag));

    private static string Seconds(TimeSpan span) => span.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture);

    private static string Generations(int n) => n == 1 ? "1 generation is" : $"{n} generations are";

    private static string Requests(int n) => n == 1 ? "1 request is" : $"{n} requests are";

    /// <summary>One caller's waiters, oldest first, and its place in the ring of callers.</summary>
    private sealed class CallerLine(string caller)
    {
        public string Caller { get; } = caller;
        public Waiter? Head;
        public Waiter? Tail;
        public CallerLine? NextLine;
        public CallerLine? PreviousLine;
    }

    /// <summary>One waiting request; completed exactly once, by whoever takes it out of its line under the lock.</summary>
    private sealed class Waiter(AdmissionQueue owner, long enqueuedAt) : TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        public AdmissionQueue Owner { get; } = owner;
        public long EnqueuedAt { get; } = enqueuedAt;
        public CallerLine? Line;
        public Waiter? Previous;
        public Waiter? Next;
        public bool Queued;
    }
}
