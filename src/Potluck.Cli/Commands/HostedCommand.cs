using System.CommandLine;
using Potluck.Cli.Supervision;

namespace Potluck.Cli.Commands;

/// <summary>Shared plumbing of the long-running `node` and `gateway` commands: shutdown on signal or when the parent `serve` dies.</summary>
public static class HostedCommand
{
    /// <summary>Set by `serve` on its children: they exit when that process is gone, so a killed serve leaves no orphans.</summary>
    public static Option<int?> ParentPidOption() => new("--parent-pid")
    {
        Description = "Exit when the process with this id (the supervising `potluck serve`) is gone",
        Hidden = true,
    };

    /// <summary>
    /// Runs a host until Ctrl+C/SIGTERM or parent death; a shutdown we asked for is a clean exit.
    /// A host's own non-zero code (it failed to start and said why) becomes exit 1.
    /// </summary>
    public static async Task<int> RunAsync(int? parentPid, string what, Func<CancellationToken, Task<int>> runHost)
    {
        using var signals = new ShutdownSignals();
        using var watcher = parentPid is { } pid ? new ParentProcessWatcher(pid, TimeSpan.FromMilliseconds(500)) : null;
        using var stop = watcher is null
            ? CancellationTokenSource.CreateLinkedTokenSource(signals.Token)
            : CancellationTokenSource.CreateLinkedTokenSource(signals.Token, watcher.ParentGone);
        int code;
        try
        {
            code = await runHost(stop.Token);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // Asked to stop: that is success.
            code = ExitCodes.Ok;
        }
        if (watcher is not null && watcher.ParentGone.IsCancellationRequested)
            Console.Error.WriteLine($"potluck: the supervising process is gone; {what} shut down");
        if (code == ExitCodes.Ok) return ExitCodes.Ok;
        throw new CliFailureException($"the {what} could not start (see the message above)");
    }

    /// <summary>--verbose turns on debug logs in the host (ASP.NET Core reads Logging__* from the environment).</summary>
    public static void ApplyVerbosity(bool verbose)
    {
        if (verbose) Environment.SetEnvironmentVariable("Logging__LogLevel__Default", "Debug");
    }

    /// <summary>Parses "A-B" (layers A through B-1, like a half-open range) for --layers.</summary>
    public static (int Start, int End) ParseLayers(string text)
    {
        var dash = text.IndexOf('-');
        if (dash <= 0
            || !int.TryParse(text.AsSpan(0, dash), out var start)
            || !int.TryParse(text.AsSpan(dash + 1), out var end)
            || start < 0 || end <= start)
            throw new UsageException($"--layers must look like A-B with 0 <= A < B, meaning layers [A, B) (got '{text}')");
        return (start, end);
    }

    public static int ValidatePort(int port, string option)
    {
        if (port is < 0 or > 65535) throw new UsageException($"{option} must be between 0 and 65535 (got {port})");
        return port;
    }
}
