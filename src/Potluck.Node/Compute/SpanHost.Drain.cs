namespace Potluck.Node.Compute;

/// <summary>Graceful leave: refuse new sessions, let the ones in use finish, end whatever is left at a deadline.</summary>
public sealed partial class SpanHost
{
    // Detaching has no signal, and a session can open in the moment between Open's draining check and its insert:
    // a periodic recheck catches both.
    private static readonly TimeSpan DrainRecheck = TimeSpan.FromMilliseconds(250);

    /// <summary>
    /// Stops accepting sessions (<see cref="Open"/> refuses from now on, and the shard status says Draining);
    /// open sessions keep working. Returns how many are in use now (<see cref="SessionsInUse"/>).
    /// </summary>
    public int BeginDrain()
    {
        _registry.Draining = true;
        return SessionsInUse;
    }

    /// <summary>
    /// Open sessions that a stream holds, or that are reserved and about to be attached: what a drain waits for.
    /// A detached session (its stream broke; kept for a resume) does not hold the node up: its gateway re-routes it.
    /// </summary>
    public int SessionsInUse
    {
        get
        {
            var count = 0;
            foreach (var session in _registry.Sessions) if (session.DetachedSinceTicks is null) count++;
            return count;
        }
    }

    /// <summary>
    /// Waits until no session is in use (<see cref="SessionsInUse"/>), at most <paramref name="timeout"/>. True when
    /// they all finished in time; false at the deadline or when <paramref name="ct"/> fires first.
    /// </summary>
    public async Task<bool> WaitForSessionsToFinishAsync(TimeSpan timeout, CancellationToken ct)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(timeout);
        // One registration per session for the whole wait, disposed at the end.
        var closedSignals = new Dictionary<StageSession, (Task Closed, CancellationTokenRegistration Registration)>();
        try
        {
            while (true)
            {
                var pending = new List<Task>();
                foreach (var session in _registry.Sessions)
                {
                    if (session.DetachedSinceTicks is not null) continue;
                    if (!closedSignals.TryGetValue(session, out var signal))
                    {
                        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                        var registration = session.Closed.Register(static state => ((TaskCompletionSource)state!).TrySetResult(), closed);
                        closedSignals[session] = signal = (closed.Task, registration);
                    }
                    pending.Add(signal.Closed);
                }
                if (pending.Count == 0) return true;
                if (deadline.IsCancellationRequested) return false;
                try
                {
                    await Task.WhenAll(pending).WaitAsync(DrainRecheck, deadline.Token);
                }
                catch (TimeoutException)
                {
                    // Recheck: a session may have detached, or opened after this snapshot.
                }
                catch (OperationCanceledException) when (deadline.IsCancellationRequested)
                {
                    return SessionsInUse == 0;
                }
            }
        }
        finally
        {
            foreach (var (_, registration) in closedSignals.Values) registration.Dispose();
        }
    }

    /// <summary>
    /// Ends every session still open, in use or detached, as cancelled: each stream ends with an error status,
    /// which the gateway treats as a stage failure and re-routes onto a replica. Returns how many were ended.
    /// </summary>
    public int EndRemaining() => _registry.CloseAll(cancelled: true);
}
