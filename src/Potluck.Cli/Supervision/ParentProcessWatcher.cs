namespace Potluck.Cli.Supervision;

/// <summary>
/// Cancels when the process that started us is gone, so a `serve` that was SIGKILLed leaves no orphans.
/// Polls getppid(): once the parent dies the kernel re-parents us, so the value changes; unlike
/// probing the pid, this cannot be fooled by pid reuse.
/// </summary>
public sealed class ParentProcessWatcher : IDisposable
{
    private readonly CancellationTokenSource _parentGone = new();
    private readonly Timer _timer;
    private readonly int _expectedParent;

    public ParentProcessWatcher(int expectedParentPid, TimeSpan pollInterval)
    {
        _expectedParent = expectedParentPid;
        _timer = new Timer(_ => Check(), null, TimeSpan.Zero, pollInterval);
    }

    public CancellationToken ParentGone => _parentGone.Token;

    private void Check()
    {
        try
        {
            if (_parentGone.IsCancellationRequested) return;
            var actual = PosixProcess.ParentPid;
            if (actual != _expectedParent && actual != -1) _parentGone.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // A last tick racing Dispose: nothing left to cancel.
        }
    }

    public void Dispose()
    {
        _timer.Dispose();
        _parentGone.Dispose();
    }
}
