using System.Collections.Concurrent;

namespace Potluck.Cli.Supervision;

/// <summary>
/// Starts children, forwards their output with a name prefix, reports unexpected exits,
/// and stops all of them (in parallel, SIGTERM then SIGKILL) so nothing outlives the supervisor.
/// </summary>
public sealed class ProcessSupervisor : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, SupervisedProcess> _children = new();
    private readonly Action<SupervisedProcess, string, bool> _onLine;
    private readonly TimeSpan _stopGrace;

    /// <param name="onLine">Called for every output line: child, text, true when it came from stderr.</param>
    /// <param name="stopGrace">How long a child gets after SIGTERM before SIGKILL.</param>
    public ProcessSupervisor(Action<SupervisedProcess, string, bool> onLine, TimeSpan stopGrace)
    {
        _onLine = onLine;
        _stopGrace = stopGrace;
    }

    /// <summary>Raised (on a pool thread) when a child exits without having been asked to stop.</summary>
    public event Action<SupervisedProcess, int>? UnexpectedExit;

    public IReadOnlyCollection<SupervisedProcess> Children => [.. _children.Values];

    public SupervisedProcess Start(ChildProcessSpec spec)
    {
        var child = new SupervisedProcess(spec, _onLine);
        if (!_children.TryAdd(spec.Name, child))
        {
            child.Dispose();
            throw new InvalidOperationException($"a child named {spec.Name} is already running");
        }
        _ = ReportExitAsync(child);
        return child;
    }

    public SupervisedProcess Get(string name) => _children[name];

    /// <summary>Stops the named children (in parallel) and waits for them; others keep running.</summary>
    public async Task StopAsync(IEnumerable<string> names)
    {
        var stopping = new List<Task<int>>();
        foreach (var name in names)
            if (_children.TryGetValue(name, out var child)) stopping.Add(child.StopAsync(_stopGrace));
        await Task.WhenAll(stopping);
    }

    public async Task StopAllAsync()
    {
        await Task.WhenAll(_children.Values.Select(child => child.StopAsync(_stopGrace)));
    }

    /// <summary>SIGKILL everything immediately (a second Ctrl+C).</summary>
    public void KillAll()
    {
        foreach (var child in _children.Values) child.Kill();
    }

    private async Task ReportExitAsync(SupervisedProcess child)
    {
        var code = await child.Exited;
        if (!child.StopRequested) UnexpectedExit?.Invoke(child, code);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAllAsync();
        foreach (var child in _children.Values) child.Dispose();
        _children.Clear();
    }
}
