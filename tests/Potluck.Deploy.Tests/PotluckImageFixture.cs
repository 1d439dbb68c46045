namespace Potluck.Deploy.Tests;

/// <summary>
/// Builds what every container test needs, once per run: a host `dotnet publish` of the CLI, the image from
/// deploy/Dockerfile (exactly the README's steps), and the demo model in a host folder that containers mount
/// read-only and the llama.cpp oracle reads directly. Removes every container and network the tests labelled.
/// </summary>
public sealed class PotluckImageFixture : IDisposable
{
    public const string Image = "potluck:deploy-test";
    /// <summary>Every container and network the tests create carries this label, so cleanup finds leftovers too.</summary>
    public const string Label = "potluck.deploy-tests";
    public const string ModelFile = "model.gguf";

    private readonly Exception? _setupFailure;

    public string RunId { get; } = Guid.NewGuid().ToString("N")[..8];
    public string ModelDirectory { get; } = Directory.CreateTempSubdirectory("potluck-deploy-model").FullName;
    public string ModelPath => Path.Combine(ModelDirectory, ModelFile);

    /// <summary>The containers' pool CA ("potluck"), mounted read-only: the gateway holds it, nodes issue from it.</summary>
    public string PoolDirectory { get; } = Path.Combine(Directory.CreateTempSubdirectory("potluck-deploy-pool").FullName, "pool");

    public PotluckImageFixture()
    {
        if (DeployEnvironment.WhyNoDocker is not null && !DeployEnvironment.Required) return; // the facts skip
        DeployEnvironment.ConfigureTestcontainers();
        try
        {
            RemoveLabelled(); // a killed earlier run (no Ryuk here) leaves containers behind
            var root = DeployEnvironment.RepositoryRoot;
            ProcessRunner.RunChecked("dotnet", "publish src/Potluck.Cli -c Release -o artifacts/publish --nologo", TimeSpan.FromMinutes(8), root);
            ProcessRunner.RunChecked("docker", $"build -f deploy/Dockerfile -t {Image} .", TimeSpan.FromMinutes(5), root,
                new Dictionary<string, string> { ["DOCKER_BUILDKIT"] = "0" });
            // The same deterministic generator the `model` compose service and the chart's init container run.
            ProcessRunner.RunChecked("dotnet", $"artifacts/publish/potluck.dll model create-demo --output {ModelPath}", TimeSpan.FromMinutes(3), root,
                new Dictionary<string, string> { ["POTLUCK_HOME"] = Path.Combine(ModelDirectory, "home") });
            // Containers run as uid 1654: the folder and file must be readable by others.
            File.SetUnixFileMode(ModelDirectory, (UnixFileMode)0b111_101_101);
            File.SetUnixFileMode(ModelPath, (UnixFileMode)0b110_100_100);
            // A throwaway CA for this run; uid 1654 must read its key too (a real pool mounts a 0400 secret it owns).
            Potluck.Security.PoolAuthority.Create(PoolDirectory, "potluck").Dispose();
            File.SetUnixFileMode(Path.GetDirectoryName(PoolDirectory)!, (UnixFileMode)0b111_101_101);
            File.SetUnixFileMode(PoolDirectory, (UnixFileMode)0b111_101_101);
            foreach (var file in Directory.GetFiles(PoolDirectory)) File.SetUnixFileMode(file, (UnixFileMode)0b110_100_100);
        }
        catch (Exception e)
        {
            _setupFailure = e;
        }
    }

    /// <summary>Throws the setup failure inside the test that needs it, so it shows as that test's failure.</summary>
    public void EnsureReady()
    {
        if (DeployEnvironment.WhyNoDocker is { } why)
            throw new InvalidOperationException($"{DeployEnvironment.RequireVariable}=1 but docker is not usable: {why}");
        if (_setupFailure is not null) throw new InvalidOperationException($"image setup failed: {_setupFailure.Message}", _setupFailure);
    }

    public IReadOnlyDictionary<string, string> Labels => new Dictionary<string, string> { [Label] = RunId };

    public static void RemoveLabelled()
    {
        var ids = ProcessRunner.Run("docker", $"ps -aq --filter label={Label}", TimeSpan.FromSeconds(30));
        var list = ids.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (ids.ExitCode == 0 && list.Length > 0)
            ProcessRunner.Run("docker", $"rm -f -v {string.Join(' ', list)}", TimeSpan.FromSeconds(60));
        ProcessRunner.Run("docker", $"network prune -f --filter label={Label}", TimeSpan.FromSeconds(30));
        // Compose projects the compose test started (it cannot label them): named potluck-test-*.
        var projects = ProcessRunner.Run("docker", "ps -a --filter label=com.docker.compose.project --format {{.Label \"com.docker.compose.project\"}}",
            TimeSpan.FromSeconds(30));
        foreach (var project in projects.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Distinct())
        {
            if (!project.StartsWith(ComposeProjectPrefix, StringComparison.Ordinal)) continue;
            ProcessRunner.Run("docker", $"compose -p {project} down -v --timeout 5", TimeSpan.FromMinutes(2));
        }
    }

    public const string ComposeProjectPrefix = "potluck-test-";

    public void Dispose()
    {
        if (DeployEnvironment.WhyNoDocker is null)
        {
            try
            {
                RemoveLabelled();
                // Each run rebuilds the image; the layers the tag no longer points at would pile up.
                ProcessRunner.Run("docker", "image prune -f --filter label=org.opencontainers.image.title=potluck", TimeSpan.FromMinutes(1));
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException) { }
        }
        try { Directory.Delete(ModelDirectory, recursive: true); } catch (IOException) { }
    }
}

[CollectionDefinition(Name)]
public sealed class DockerCollection : ICollectionFixture<PotluckImageFixture>
{
    public const string Name = "docker";
}
