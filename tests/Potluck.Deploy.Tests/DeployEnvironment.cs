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

    public static string RepositoryRoot => RepositoryLayout.Root;

    private static readonly Lazy<string?> DockerProblem = new(() => Probe("docker", "info --format {{.ServerVersion}}")
        ?? Probe("docker", "compose version --short"));

    private static readonly Lazy<string?> HelmProblem = new(() => Probe("helm", "version --short"));

    // `docker compose config` needs only the CLI and its compose plugin, no engine.
    private static readonly Lazy<string?> ComposeCliProblem = new(() => Probe("docker", "compose version --short"));

    /// <summary>Why docker cannot be used here, or null when it can.</summary>
    public static string? WhyNoDocker => DockerProblem.Value;

    public static string? WhyNoHelm => HelmProblem.Value;

    public static string? WhyNoComposeCli => ComposeCliProblem.Value;

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

/// <summary>A fact that needs the docker CLI with compose v2 (not a running engine).</summary>
public sealed class ComposeFactAttribute : FactAttribute
{
    public ComposeFactAttribute()
    {
        if (!DeployEnvironment.Required && DeployEnvironment.WhyNoComposeCli is { } why)
            Skip = $"docker compose is not available ({why}); run deploy/ci/setup-docker.sh, or set {DeployEnvironment.RequireVariable}=1 to fail instead";
    }
}
