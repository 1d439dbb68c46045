using System.Diagnostics;
using System.Reflection;
using System.Text;

namespace Potluck.Cli.Tests;

/// <summary>What one run of the real `potluck` executable produced.</summary>
public sealed record PotluckRun(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>Runs the built potluck.dll through the dotnet host, the way users and `serve` do, with a hard timeout.</summary>
public static class PotluckProcess
{
    /// <summary>The CLI's own build output (same configuration as this test assembly), not a copy in the test folder.</summary>
    public static string DllPath { get; } = FindDll();

    public static ProcessStartInfo StartInfo(IEnumerable<string> arguments, string potluckHome)
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
        return start;
    }

    public static Task<PotluckRun> RunAsync(string potluckHome, TimeSpan timeout, params string[] arguments) =>
        RunWithInputAsync(potluckHome, timeout, "", arguments);

    /// <summary>Runs with <paramref name="input"/> piped to stdin (then closed), as `echo ... | potluck chat` does.</summary>
    public static async Task<PotluckRun> RunWithInputAsync(string potluckHome, TimeSpan timeout, string input, params string[] arguments)
    {
        using var process = Process.Start(StartInfo(arguments, potluckHome))!;
        await process.StandardInput.WriteAsync(input);
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var deadline = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(deadline.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"potluck {string.Join(' ', arguments)} did not exit within {timeout.TotalSeconds} s");
        }
        return new PotluckRun(process.ExitCode, await stdout, await stderr);
    }

    private static string FindDll()
    {
        var configuration = typeof(PotluckProcess).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Debug";
        for (var folder = new DirectoryInfo(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
        {
            var candidate = Path.Combine(folder.FullName, "src", "Potluck.Cli", "bin", configuration, "net10.0", "potluck.dll");
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException($"potluck.dll ({configuration}) not found above {AppContext.BaseDirectory}; build src/Potluck.Cli first");
    }
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

internal static class TextAssert
{
    /// <summary>An error for people: exactly one "potluck: error:" line and no stack trace.</summary>
    public static void OneLineError(PotluckRun run, string expectedFragment)
    {
        var lines = run.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var errors = lines.Where(l => l.StartsWith("potluck: error:", StringComparison.Ordinal)).ToList();
        Assert.True(errors.Count == 1, $"expected one error line\n{run}");
        Assert.Contains(expectedFragment, errors[0], StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("   at ", run.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", run.Stderr, StringComparison.Ordinal);
    }
}
