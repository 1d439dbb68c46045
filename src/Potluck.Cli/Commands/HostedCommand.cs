using System.CommandLine;
using Microsoft.Extensions.Configuration;
using Potluck.Cli.Supervision;

namespace Potluck.Cli.Commands;

/// <summary>
/// Shared plumbing of the long-running `node` and `gateway` commands: flags turned into configuration over the
/// environment, shutdown on signal or when the parent `serve` dies, and the host's exit code passed through.
/// </summary>
public static class HostedCommand
{
    /// <summary>Set by `serve` on its children: they exit when that process is gone, so a killed serve leaves no orphans.</summary>
    public static Option<int?> ParentPidOption() => new("--parent-pid")
    {
        Description = "Exit when the process with this id (the supervising `potluck serve`) is gone",
        Hidden = true,
    };

    /// <summary>
    /// Runs a command's startup and host until Ctrl+C/SIGTERM or parent death. A host that ran and was asked to stop
    /// is a clean exit (0); a stop that arrived before the host was up (while joining or loading) is
    /// <see cref="ExitCodes.Interrupted"/>; a host's own non-zero code (it said why on stderr) is passed through.
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
            // Stopped before the host was serving.
            code = ExitCodes.Interrupted;
        }
        if (watcher is not null && watcher.ParentGone.IsCancellationRequested)
            Console.Error.WriteLine($"potluck: the supervising process is gone; {what} shut down");
        if (code == ExitCodes.Ok) return ExitCodes.Ok;
        if (code == ExitCodes.Interrupted)
        {
            Console.Error.WriteLine("potluck: interrupted");
            return code;
        }
        throw new HostExitException(code, $"the {what} could not start: {ExitCodes.Describe(code)} (see the message above)");
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

    /// <summary>
    /// `--host`, kept as a deprecated alias: says what it maps to (its meaning differed between commands) and fails
    /// when given together with the option it stands for.
    /// </summary>
    public static string? DeprecatedHost(ParseResult parse, Option<string?> host, Option<string?> replacement, string command, string meaning)
    {
        if (parse.GetValue(host) is not { } value) return null;
        if (parse.GetResult(replacement) is { Implicit: false })
            throw new UsageException($"--host is a deprecated alias of {replacement.Name} on `potluck {command}`; pass only {replacement.Name}");
        Console.Error.WriteLine($"potluck: warning: --host is deprecated; on `potluck {command}` it means {replacement.Name} {value} ({meaning})");
        return value;
    }

    /// <summary>The flags a user gave, as configuration keys of one section, layered over the environment variables.</summary>
    public sealed class FlagConfiguration(string section)
    {
        private readonly Dictionary<string, string?> _values = new(StringComparer.OrdinalIgnoreCase);

        /// <summary>Sets <paramref name="key"/> when the flag was given (an implicit default leaves the environment's value or the options' default).</summary>
        public void Set<T>(ParseResult parse, Option<T> option, string key, Func<T, string?>? format = null)
        {
            if (parse.GetResult(option) is not { Implicit: false }) return;
            var value = parse.GetValue(option);
            Set(key, format is null ? Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture) : format(value!));
        }

        public void Set(string key, string? value) => _values[$"{section}:{key}"] = value;

        /// <summary>Sets a key of another section (Potluck:Security:JoinToken from `node --token`).</summary>
        public void SetKey(string path, string? value) => _values[path] = value;

        /// <summary>Environment variables (Potluck__Node__*, Potluck__Cluster__*, OTEL_*) first, the flags over them.</summary>
        public IConfiguration Build() => new ConfigurationBuilder()
            .AddEnvironmentVariables()
            .AddInMemoryCollection(_values)
            .Build();
    }
}
