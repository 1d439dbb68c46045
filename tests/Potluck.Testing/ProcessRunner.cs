using System.Diagnostics;

namespace Potluck.Testing;

/// <summary>Runs a tool (docker, helm, bash) to completion, synchronously, with a hard timeout (its process tree is killed past it).</summary>
public static class ProcessRunner
{
    public static ProcessResult Run(string file, string arguments, TimeSpan timeout, string? workingDirectory = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(file, arguments) { WorkingDirectory = workingDirectory ?? RepositoryLayout.Root };
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) start.Environment[key] = value;
        return Run(start, timeout);
    }

    public static ProcessResult Run(ProcessStartInfo start, TimeSpan timeout) =>
        ChildProcess.RunAsync(start, timeout).GetAwaiter().GetResult();

    public static string RunChecked(string file, string arguments, TimeSpan timeout, string? workingDirectory = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var result = Run(file, arguments, timeout, workingDirectory, environment);
        if (result.ExitCode != 0)
            throw new InvalidOperationException($"`{file} {arguments}` exited {result.ExitCode}:\n{result.Tail()}");
        return result.Output;
    }
}
