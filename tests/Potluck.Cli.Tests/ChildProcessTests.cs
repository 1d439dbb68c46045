using System.Diagnostics;

namespace Potluck.Cli.Tests;

/// <summary>The shared child-process helper (tests/Potluck.Testing) that every launcher builds on, driving /bin/sh.</summary>
[ProcessTest]
public sealed class ChildProcessTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(20);

    private static ChildProcess Shell(string script) => ChildProcess.Start("/bin/sh", ["-c", script], name: "sh");

    [Fact]
    public async Task OutputIsKeptExactlyAndByLineWithTheExitCode()
    {
        var run = await ChildProcess.RunAsync(ChildProcess.StartInfo("/bin/sh", ["-c", "read x; printf 'a\\r\\nb'; echo \"$x\" >&2; exit 3"]),
            Limit, standardInput: "piped\n");
        Assert.Equal(3, run.ExitCode);
        Assert.Equal("a\r\nb", run.StandardOutput);
        Assert.Equal("piped\n", run.StandardError);
        Assert.Equal(new[] { "a", "b", "piped" }, run.Output.Split('\n').Order());
    }

    [Fact]
    public async Task WaitingForALineFailsWithTheOutputWhenTheChildExitsFirst()
    {
        await using var child = Shell("echo started; exit 4");
        Assert.Equal("started", await child.WaitForOutputAsync("start", Limit));
        var failed = await Assert.ThrowsAsync<InvalidOperationException>(() => child.WaitForOutputAsync("never printed", Limit));
        Assert.Contains("exited (4)", failed.Message);
        Assert.Contains("started", failed.Message);
    }

    [Fact]
    public async Task ARunPastItsTimeoutIsKilledAndSaysWhatItPrinted()
    {
        var clock = Stopwatch.StartNew();
        var timedOut = await Assert.ThrowsAsync<TimeoutException>(() =>
            ChildProcess.RunAsync(ChildProcess.StartInfo("/bin/sh", ["-c", "echo waiting; exec sleep 60"]), TimeSpan.FromSeconds(1)));
        Assert.Contains("waiting", timedOut.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"took {clock.Elapsed}");
    }

    [Fact]
    public async Task StopSendsTheSignalAndKillsTheTreeOfAChildThatIgnoresIt()
    {
        await using var polite = Shell("trap 'echo bye; exit 0' INT; echo up; while :; do sleep 0.1; done");
        await polite.WaitForOutputAsync("up", Limit);
        Assert.Equal(0, await polite.StopAsync(Limit, ProcessSignal.Interrupt));
        Assert.Contains("bye", polite.StandardOutputLines);

        // The grandchild (sleep) holds no signal handler of its own: the tree kill must take it too.
        await using var stubborn = Shell("trap '' TERM; sleep 60 & echo $!; wait");
        var grandchild = int.Parse(await stubborn.WaitForOutputAsync("", Limit));
        var clock = Stopwatch.StartNew();
        await stubborn.StopAsync(TimeSpan.FromMilliseconds(500));
        Assert.True(stubborn.HasExited);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"took {clock.Elapsed}");
        Assert.False(ProcessSupervisorTests.ProcessAlive(grandchild), $"grandchild {grandchild} outlived the tree kill");
    }

    [Fact]
    public async Task DisposingTwiceAndAfterExitIsSafe()
    {
        var child = Shell("exit 0");
        Assert.Equal(0, await child.WaitForExitAsync(Limit));
        await child.DisposeAsync();
        await child.DisposeAsync();
        child.Dispose();
        Assert.Throws<InvalidOperationException>(() => ChildProcess.Signal(int.MaxValue, ProcessSignal.Continue));
    }
}
