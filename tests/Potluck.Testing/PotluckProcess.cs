using System.Diagnostics;
using Xunit.Abstractions;

namespace Potluck.Testing;

/// <summary>What one run of the real `potluck` executable produced.</summary>
public sealed record PotluckRun(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>Runs the built potluck.dll through the dotnet host, the way users and `serve` do, with a hard timeout.</summary>
public static class PotluckProcess
{
    /// <summary>How long a long-running command gets to stop after SIGTERM before it is killed.</summary>
    public static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(30);

    /// <summary>The CLI's own build output (same configuration as the tests), not a copy in the test folder.</summary>
    public static string DllPath => Dll.Value;

    private static readonly Lazy<string> Dll = new(() => RepositoryLayout.BuildOutput("src/Potluck.Cli", "potluck.dll"));

    public static ProcessStartInfo StartInfo(IEnumerable<string> arguments, string potluckHome,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(DllPath);
        foreach (var argument in arguments) start.ArgumentList.Add(argument);
        start.Environment["POTLUCK_HOME"] = potluckHome;
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["NO_COLOR"] = "1";
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) start.Environment[key] = value;
        return start;
    }

    public static Task<PotluckRun> RunAsync(string potluckHome, TimeSpan timeout, params string[] arguments) =>
        RunWithInputAsync(potluckHome, timeout, "", arguments);

    /// <summary>Runs with <paramref name="input"/> piped to stdin (then closed), as `echo ... | potluck chat` does.</summary>
    public static async Task<PotluckRun> RunWithInputAsync(string potluckHome, TimeSpan timeout, string input, params string[] arguments)
    {
        var run = await ChildProcess.RunAsync(StartInfo(arguments, potluckHome), timeout, input, name: Name(arguments));
        return new PotluckRun(run.ExitCode, run.StandardOutput, run.StandardError);
    }

    /// <summary>
    /// A long-running command (`potluck node`, `potluck gateway`), its output kept and mirrored to
    /// <paramref name="output"/>; disposing sends SIGTERM and kills it after <see cref="StopGrace"/>.
    /// </summary>
    public static ChildProcess Start(string potluckHome, IEnumerable<string> arguments, ITestOutputHelper? output = null)
    {
        var list = arguments.ToArray();
        var child = ChildProcess.Start(StartInfo(list, potluckHome), Name(list), output);
        child.StopGrace = StopGrace;
        return child;
    }

    public static ChildProcess Start(string potluckHome, params string[] arguments) => Start(potluckHome, arguments, output: null);

    private static string Name(IReadOnlyList<string> arguments) => arguments.Count > 0 ? $"potluck {arguments[0]}" : "potluck";
}

/// <summary>A throwaway POTLUCK_HOME per test class, so the user's real cache is never touched.</summary>
public sealed class TempHome : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("potluck-cli-test-").FullName;

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // A child still holding a file open; the OS temp cleaner gets it.
        }
    }
}
