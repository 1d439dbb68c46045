using System.Diagnostics;

namespace Potluck.Cli.Supervision;

/// <summary>A running child: its output is forwarded line by line; stopping is SIGTERM, then SIGKILL after a grace period.</summary>
public sealed class SupervisedProcess : IDisposable
{
    private const int TailLines = 40;
    private const string SetsidPath = "/usr/bin/setsid";
    private readonly Process _process;
    private readonly TaskCompletionSource<int> _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Queue<string> _tail = new();
    private readonly Lock _tailGate = new();
    private readonly TaskCompletionSource _stdoutClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _stderrClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal SupervisedProcess(ChildProcessSpec spec, Action<SupervisedProcess, string, bool> onLine)
    {
        Spec = spec;
        // setsid(1) execs in place (a fresh child is never a group leader), so the pid stays the child's own.
        var ownSession = spec.OwnSession && File.Exists(SetsidPath);
        var start = new ProcessStartInfo(ownSession ? SetsidPath : spec.FileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = spec.WorkingDirectory ?? Environment.CurrentDirectory,
        };
        if (ownSession) start.ArgumentList.Add(spec.FileName);
        foreach (var argument in spec.Arguments) start.ArgumentList.Add(argument);
        if (spec.Environment is not null)
            foreach (var (key, value) in spec.Environment) start.Environment[key] = value;

        _process = new Process { StartInfo = start, EnableRaisingEvents = true };
        _process.OutputDataReceived += (_, e) => OnData(e.Data, isError: false, onLine, _stdoutClosed);
        _process.ErrorDataReceived += (_, e) => OnData(e.Data, isError: true, onLine, _stderrClosed);
        _process.Exited += (_, _) => _ = CompleteExitAsync();
        if (!_process.Start()) throw new CliFailureException($"could not start {spec.Name} ({spec.FileName})");
        Pid = _process.Id;
        StartedAt = DateTimeOffset.UtcNow;
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public ChildProcessSpec Spec { get; }
    public string Name => Spec.Name;
    public int Pid { get; }
    public DateTimeOffset StartedAt { get; }

    /// <summary>Completes with the exit code once the process has exited and its output has been drained.</summary>
    public Task<int> Exited => _exited.Task;
    public bool HasExited => _exited.Task.IsCompleted;

    /// <summary>True once <see cref="StopAsync"/> was asked for: an exit after that is expected, not a crash.</summary>
    public bool StopRequested { get; private set; }

    /// <summary>The last lines the child wrote, for an error message when it dies early.</summary>
    public IReadOnlyList<string> Tail
    {
        get { lock (_tailGate) return [.. _tail]; }
    }

    /// <summary>SIGTERM, wait up to <paramref name="grace"/>, then SIGKILL the whole tree. Returns the exit code.</summary>
    public async Task<int> StopAsync(TimeSpan grace)
    {
        StopRequested = true;
        if (HasExited) return await Exited;
        PosixProcess.Terminate(Pid);
        var finished = await Task.WhenAny(Exited, Task.Delay(grace));
        if (finished != Exited) Kill();
        // After SIGKILL the kernel reaps promptly; still bound the wait.
        finished = await Task.WhenAny(Exited, Task.Delay(TimeSpan.FromSeconds(10)));
        return finished == Exited ? await Exited : -1;
    }

    /// <summary>SIGKILL now, no grace: for a second Ctrl+C or tests that simulate a crash.</summary>
    public void Kill()
    {
        try
        {
            if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Exited between the check and the kill.
        }
    }

    private void OnData(string? line, bool isError, Action<SupervisedProcess, string, bool> onLine, TaskCompletionSource closed)
    {
        if (line is null)
        {
            closed.TrySetResult();
            return;
        }
        lock (_tailGate)
        {
            _tail.Enqueue(line);
            if (_tail.Count > TailLines) _tail.Dequeue();
        }
        onLine(this, line, isError);
    }

    private async Task CompleteExitAsync()
    {
        // Let the readers deliver the last lines (often the reason for the exit) before reporting it.
        await Task.WhenAny(Task.WhenAll(_stdoutClosed.Task, _stderrClosed.Task), Task.Delay(TimeSpan.FromSeconds(2)));
        int code;
        try
        {
            code = _process.ExitCode;
        }
        catch (InvalidOperationException)
        {
            code = -1;
        }
        _exited.TrySetResult(code);
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
    }
}
