namespace Potluck.Node.Compute;

/// <summary>Graceful leave: refuse new sessions, let the open ones finish, end whatever is left at a deadline.</summary>
public sealed partial class SpanHost
{
    // Sessions can open in the moment between Open's draining check and its insert; a periodic recheck catches them.
    private static readonly TimeSpan DrainRecheck = TimeSpan.FromMilliseconds(250);

    /// <summary>
    /// Stops accepting sessions (<see cref="Open"/> refuses from now on, and the shard status says Draining);
    /// open sessions keep working. Returns how many are open now.
    /// </summary>
    public int BeginDrain()
    {
        Draining = true;
        return _sessions.Count;
    }

    /// <summary>
    /// Waits until no session is open, at most <paramref name="timeout"/>. True when every session finished
    /// in time; false at the deadline or when <paramref name="ct"/> fires first.
    /// </summary>
    public async Task<bool> WaitForNoSessionsAsync(TimeSpan timeout, CancellationToken ct)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(timeout);
        // One registration per session for the whole wait, disposed at the end.
        var closedSignals = new Dictionary<StageSession, (Task Closed, CancellationTokenRegistration Registration)>();
        try
        {
            while (!_sessions.IsEmpty)
            {
                if (deadline.IsCancellationRequested) return false;
                var pending = new List<Task>(_sessions.Count);
                foreach (var session in _sessions.Values)
                {
                    if (!closedSignals.TryGetValue(session, out var signal))
                    {
                        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                        var registration = session.Closed.Register(static state => ((TaskCompletionSource)state!).TrySetResult(), closed);
                        closedSignals[session] = signal = (closed.Task, registration);
                    }
                    pending.Add(signal.Closed);
                }
                try
                {
                    await Task.WhenAll(pending).WaitAsync(DrainRecheck, deadline.Token);
                }
                catch (TimeoutException)
                {
                    // Recheck: a session may have opened after this snapshot.
                }
                catch (OperationCanceledException) when (deadline.IsCancellationRequested)
                {
                    return _sessions.IsEmpty;
                }
            }
            return true;
        }
        finally
        {
            foreach (var (_, registration) in closedSignals.Values) registration.Dispose();
        }
    }

    /// <summary>
    /// Ends every session still open as cancelled: each stream ends with an error status, which the gateway
    /// treats as a stage failure and re-routes onto a replica. Returns how many were ended.
    /// </summary>
    public int EndRemaining()
    {
        Draining = true;
        var ended = 0;
        foreach (var id in _sessions.Keys)
            if (Close(id, cancelled: true)) ended++;
        return ended;
    }
}
