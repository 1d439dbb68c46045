using System.Diagnostics;
using System.Text;

// Docker, bash and helm as used here are Linux tools; so is the native ggml the oracle loads.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Potluck.Deploy.Tests;

/// <summary>
/// What the deployment tests need from the machine: the repository, docker (engine + compose v2) and helm.
/// On a developer machine without them the tests skip with the reason; in CI (POTLUCK_REQUIRE_DOCKER=1) they run
/// and fail, so a broken setup can never pass as "skipped".
/// </summary>
public static class DeployEnvironment
{
    public const string RequireVariable = "POTLUCK_REQUIRE_DOCKER";

    public static bool Required => Environment.GetEnvironmentVariable(RequireVariable) is "1" or "true";

    public static string RepositoryRoot { get; } = FindRepositoryRoot();

    private static readonly Lazy<string?> DockerProblem = new(() => Probe("docker", "info --format {{.ServerVersion}}")
        ?? Probe("docker", "compose version --short"));

    private static readonly Lazy<string?> HelmProblem = new(() => Probe("helm", "version --short"));

    /// <summary>Why docker cannot be used here, or null when it can.</summary>
    public static string? WhyNoDocker => DockerProblem.Value;

    public static string? WhyNoHelm => HelmProblem.Value;

    /// <summary>Testcontainers talks to the 20.10 engine (API 1.41) and must not pull the Ryuk image (no registry).</summary>
    public static void ConfigureTestcontainers()
    {
        SetIfUnset("DOCKER_API_VERSION", "1.41");
        SetIfUnset("TESTCONTAINERS_RYUK_DISABLED", "true");
        SetIfUnset("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1");
    }

    private static void SetIfUnset(string name, string value)
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable(name))) Environment.SetEnvironmentVariable(name, value);
    }

    private static string? Probe(string tool, string arguments)
    {
        try
        {
            var result = ProcessRunner.Run(tool, arguments, TimeSpan.FromSeconds(20));
            return result.ExitCode == 0 ? null : $"`{tool} {arguments}` failed: {result.Tail()}";
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or TimeoutException)
        {
            return $"`{tool}` is not usable here ({e.Message})";
        }
    }

    private static string FindRepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Cluster.sln"))) return dir.FullName;
        throw new InvalidOperationException($"Cluster.sln not found above {AppContext.BaseDirectory}");
    }
}

/// <summary>A fact that needs a running Docker engine with compose v2.</summary>
public sealed class DockerFactAttribute : FactAttribute
{
    public DockerFactAttribute()
    {
        if (!DeployEnvironment.Required && DeployEnvironment.WhyNoDocker is { } why)
            Skip = $"docker is not available ({why}); run deploy/ci/setup.sh, or set {DeployEnvironment.RequireVariable}=1 to fail instead";
    }
}

/// <summary>A fact that needs helm on PATH.</summary>
public sealed class HelmFactAttribute : FactAttribute
{
    public HelmFactAttribute()
    {
        if (!DeployEnvironment.Required && DeployEnvironment.WhyNoHelm is { } why)
            Skip = $"helm is not available ({why}); run deploy/ci/setup-helm.sh, or set {DeployEnvironment.RequireVariable}=1 to fail instead";
    }
}

public sealed record ProcessResult(int ExitCode, string Output)
{
    public string Tail(int chars = 4000) => Output.Length <= chars ? Output.Trim() : "..." + Output[^chars..].Trim();
}

/// <summary>Runs a tool to completion with a hard timeout (the whole process tree is killed when it runs over).</summary>
public static class ProcessRunner
{
    public static ProcessResult Run(string file, string arguments, TimeSpan timeout, string? workingDirectory = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(file, arguments)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? DeployEnvironment.RepositoryRoot,
        };
        if (environment is not null)
            foreach (var (key, value) in environment) start.Environment[key] = value;
        var output = new StringBuilder();
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.Start();
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit(TimeSpan.FromSeconds(10));
            lock (output) throw new TimeoutException($"`{file} {arguments}` ran over {timeout.TotalSeconds:0}s; output so far:\n{output}");
        }
        process.WaitForExit(); // flushes the async readers
        lock (output) return new ProcessResult(process.ExitCode, output.ToString());
    }

    public static string RunChecked(string file, string arguments, TimeSpan timeout, string? workingDirectory = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var result = Run(file, arguments, timeout, workingDirectory, environment);
        if (result.ExitCode != 0)
            throw new InvalidOperationException($"`{file} {arguments}` exited {result.ExitCode}:\n{result.Tail()}");
        return result.Output;
    }
}
