using System.Collections.Concurrent;
using System.Diagnostics;
using Potluck.Cli.Supervision;

namespace Potluck.Cli.Tests;

/// <summary>The supervisor `serve` uses, driving real child processes (/bin/sh).</summary>
[ProcessTest]
public sealed class ProcessSupervisorTests
{
    private static readonly TimeSpan WaitLimit = TimeSpan.FromSeconds(20);
    private readonly ConcurrentQueue<string> _lines = new();

    private ProcessSupervisor NewSupervisor(TimeSpan grace) =>
        new((child, line, isError) => _lines.Enqueue($"[{child.Name}]{(isError ? "!" : "")} {line}"), grace);

    private static ChildProcessSpec Shell(string name, string script) => new(name, "/bin/sh", ["-c", script]);

    [Fact]
    public async Task OutputIsForwardedWithTheChildsNameAndExitIsReported()
    {
        await using var supervisor = NewSupervisor(TimeSpan.FromSeconds(5));
        var exited = new TaskCompletionSource<(string, int)>(TaskCreationOptions.RunContinuationsAsynchronously);
        supervisor.UnexpectedExit += (child, code) => exited.TrySetResult((child.Name, code));
        supervisor.Start(Shell("node-1", "echo hello; echo oops >&2; exit 3"));

        Assert.Equal(("node-1", 3), await exited.Task.WaitAsync(WaitLimit));
        Assert.Contains("[node-1] hello", _lines);
        Assert.Contains("[node-1]! oops", _lines);
    }

    [Fact]
    public async Task StopSendsSigtermAndAChildThatHandlesItExitsCleanly()
    {
        await using var supervisor = NewSupervisor(TimeSpan.FromSeconds(10));
        var child = supervisor.Start(Shell("node-1", "trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.1; done"));
        await WaitForLine("[node-1] up");

        var clock = Stopwatch.StartNew();
        var code = await child.StopAsync(TimeSpan.FromSeconds(10)).WaitAsync(WaitLimit);
        Assert.Equal(0, code);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"SIGTERM took {clock.Elapsed}");
        Assert.Contains("[node-1] bye", _lines);
        Assert.False(ProcessAlive(child.Pid));
    }

    [Fact]
    public async Task AChildIgnoringSigtermIsKilledAfterTheGracePeriod()
    {
        await using var supervisor = NewSupervisor(TimeSpan.FromMilliseconds(500));
        var stubborn = supervisor.Start(Shell("stubborn", "trap '' TERM; echo up; while :; do sleep 0.1; done"));
        var polite = supervisor.Start(Shell("polite", "echo up; exec sleep 60"));
        await WaitForLine("[stubborn] up");
        await WaitForLine("[polite] up");
        var unexpected = 0;
        supervisor.UnexpectedExit += (_, _) => Interlocked.Increment(ref unexpected);

        await supervisor.StopAllAsync().WaitAsync(WaitLimit);
        Assert.True(stubborn.HasExited && polite.HasExited);
        Assert.False(ProcessAlive(stubborn.Pid));
        Assert.False(ProcessAlive(polite.Pid));
        Assert.Equal(0, unexpected);
    }

    [Fact]
    public async Task OneChildDyingLeavesTheOthersRunning()
    {
        await using var supervisor = NewSupervisor(TimeSpan.FromSeconds(5));
        var victim = supervisor.Start(Shell("node-1", "echo up; exec sleep 60"));
        var survivor = supervisor.Start(Shell("node-2", "echo up; exec sleep 60"));
        await WaitForLine("[node-1] up");
        await WaitForLine("[node-2] up");
        var died = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        supervisor.UnexpectedExit += (child, _) => died.TrySetResult(child.Name);

        victim.Kill();
        Assert.Equal("node-1", await died.Task.WaitAsync(WaitLimit));
        await Task.Delay(300);
        Assert.False(survivor.HasExited);
        Assert.True(ProcessAlive(survivor.Pid));
    }

    private async Task WaitForLine(string line)
    {
        var clock = Stopwatch.StartNew();
        while (!_lines.Contains(line))
        {
            if (clock.Elapsed > WaitLimit) throw new TimeoutException($"no line '{line}'; got: {string.Join(" | ", _lines)}");
            await Task.Delay(20);
        }
    }

    /// <summary>Alive and not a zombie: /proc/PID/stat's state field is not Z.</summary>
    internal static bool ProcessAlive(int pid)
    {
        var stat = $"/proc/{pid}/stat";
        if (!File.Exists(stat)) return false;
        try
        {
            var text = File.ReadAllText(stat);
            var state = text[(text.LastIndexOf(')') + 2)..].Split(' ')[0];
            return state != "Z" && state != "X";
        }
        catch (IOException)
        {
            return false;
        }
    }
}
