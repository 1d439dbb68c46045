using DotNet.Testcontainers.Builders;
using DotNet.Testcontainers.Configurations;
using DotNet.Testcontainers.Containers;
using DotNet.Testcontainers.Networks;

namespace Potluck.Deploy.Tests;

/// <summary>
/// The image on a real Docker engine: Redis + gateway + three nodes on a network the test creates, a chat through the
/// published gateway port compared with single-node llama.cpp, and a node stopped under the pool view's eyes.
/// </summary>
[Collection(DockerCollection.Name)]
[ProcessTest]
public sealed class ClusterContainerTests(PotluckImageFixture image)
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromMinutes(3);
    internal static readonly string[] Spans = ["0:3", "3:6", "6:8"]; // the demo model has 8 layers

    [DockerFact]
    public async Task Three_node_pool_in_containers_matches_single_node_llama_cpp_and_reports_a_stopped_node()
    {
        image.EnsureReady();
        await using var network = new NetworkBuilder().WithName($"potluck-test-{image.RunId}-pool").WithLabel(PotluckImageFixture.Label, image.RunId).Build();
        await network.CreateAsync();

        await using var redis = Redis(network, "redis");
        await redis.StartAsync();

        var nodes = Spans.Select((span, i) => Node(network, $"node{i + 1}", span, "redis:6379")).ToArray();
        var gatewayPort = Ports.Free();
        var gateway = Gateway(network, gatewayPort, "redis:6379");
        try
        {
            // Nodes and gateway start together, like compose does after Redis is healthy.
            await Task.WhenAll(nodes.Select(n => n.StartAsync()).Append(gateway.StartAsync()));
            using var client = new GatewayClient(gatewayPort);
            await client.WaitUntilReadyAsync(TimeSpan.FromMinutes(2));

            const string message = "Tell me about potluck dinners.";
            const int maxTokens = 16;
            var answer = await client.ChatAsync(message, maxTokens);
            var expected = GreedyReference.Chat(image.ModelPath, message, maxTokens);
            Assert.NotEmpty(expected.Tokens);
            Assert.Equal(expected.Tokens, answer.Tokens);
            Assert.Equal(expected.Text, answer.Text);

            var healthy = await client.HealthyNodeIdsAsync();
            Assert.Superset(new HashSet<string> { "node1", "node2", "node3" }, healthy);

            await nodes[1].StopAsync();
            // Wait for the settled view: node2 gone, the others listed. (Right after a silo leaves, the pool directory
            // can briefly list fewer nodes while the survivors' next reports arrive.)
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(90);
            while (!(healthy.SetEquals(["node1", "node3"])) && DateTime.UtcNow < deadline)
            {
                await Task.Delay(1000);
                healthy = await client.HealthyNodeIdsAsync();
            }
            Assert.DoesNotContain("node2", healthy);
            Assert.Contains("node1", healthy);
            Assert.Contains("node3", healthy);
            // Layers [3, 6) are now held by nobody: the pool must say so rather than pretend to be ready.
            var pool = await client.PoolAsync();
            Assert.False(pool["coverage"]?["full_chain"]?.GetValue<bool>() ?? true, pool.ToJsonString());
        }
        finally
        {
            await gateway.DisposeAsync();
            foreach (var node in nodes) await node.DisposeAsync();
        }
    }

    [DockerFact]
    public async Task Node_and_gateway_with_a_wrong_model_path_exit_with_a_clear_line_and_never_turn_healthy()
    {
        image.EnsureReady();
        await using var node = NodeBuilder(null, "lost", "0:3", "127.0.0.1:6379", "/models/no-such-model.gguf").Build();
        await using var gateway = new ContainerBuilder(PotluckImageFixture.Image)
            .WithImagePullPolicy(_ => false)
            .WithLabel(image.Labels)
            .WithCommand("gateway")
            .WithEnvironment(GatewayEnvironment("127.0.0.1", "127.0.0.1:6379", "/models/other.gguf"))
            .Build();
        await Task.WhenAll(node.StartAsync(), gateway.StartAsync());
        foreach (var (container, path) in new[] { (node, "/models/no-such-model.gguf"), (gateway, "/models/other.gguf") })
        {
            var (exitCode, logs) = await WaitForExitAsync(container, TimeSpan.FromSeconds(60));
            Assert.NotEqual(0, exitCode);
            Assert.Contains($"model file not found: {path}", logs);
            Assert.NotEqual(TestcontainersHealthStatus.Healthy, container.Health);
        }
    }

    [DockerFact]
    public async Task Node_with_unreachable_redis_exits_with_a_clear_line_and_never_turns_healthy()
    {
        image.EnsureReady();
        await using var network = new NetworkBuilder().WithName($"potluck-test-{image.RunId}-noredis").WithLabel(PotluckImageFixture.Label, image.RunId).Build();
        await network.CreateAsync();
        // Nothing listens on this name's port: an alias of a container that runs no Redis.
        await using var node = NodeBuilder(network, "lonely", "0:3", "lonely:6399", $"/models/{PotluckImageFixture.ModelFile}").Build();
        await node.StartAsync();
        var (exitCode, logs) = await WaitForExitAsync(node, TimeSpan.FromMinutes(2));
        Assert.NotEqual(0, exitCode);
        // One error line must name both the cause (Redis) and the endpoint that could not be reached.
        var lines = logs.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(lines.Any(line => line.Contains("error:", StringComparison.Ordinal) && line.Contains("lonely:6399", StringComparison.Ordinal)
            && line.Contains("redis", StringComparison.OrdinalIgnoreCase)), $"no error line names Redis at lonely:6399; logs:\n{logs}");
        Assert.NotEqual(TestcontainersHealthStatus.Healthy, node.Health);
    }

    internal IContainer Redis(INetwork network, string alias) =>
        new ContainerBuilder("redis:7.0")
            .WithImagePullPolicy(_ => false)
            .WithLabel(image.Labels)
            .WithNetwork(network)
            .WithNetworkAliases(alias)
            .WithCommand("redis-server", "--save", "", "--appendonly", "no")
            .WithWaitStrategy(Wait.ForUnixContainer().UntilMessageIsLogged("Ready to accept connections", o => o.WithTimeout(TimeSpan.FromSeconds(60))))
            .Build();

    private IContainer Node(INetwork network, string id, string span, string redis) =>
        NodeBuilder(network, id, span, redis, $"/models/{PotluckImageFixture.ModelFile}")
            .WithWaitStrategy(Wait.ForUnixContainer().UntilContainerIsHealthy(failingStreak: 20, o => o.WithTimeout(StartTimeout)))
            .Build();

    private ContainerBuilder NodeBuilder(INetwork? network, string id, string span, string redis, string modelPath)
    {
        var builder = new ContainerBuilder(PotluckImageFixture.Image)
            .WithImagePullPolicy(_ => false)
            .WithLabel(image.Labels)
            .WithBindMount(image.ModelDirectory, "/models", AccessMode.ReadOnly)
            .WithBindMount(image.PoolDirectory, "/pool", AccessMode.ReadOnly)
            .WithCommand("node")
            .WithEnvironment(NodeEnvironment(id, span, redis, modelPath))
            .WithEnvironment("Potluck__Security__PoolDirectory", "/pool")
            // Nodes speak only mutual TLS: the healthcheck checks that the port accepts connections.
            .WithEnvironment("POTLUCK_HEALTHCHECK_URL", "tcp://127.0.0.1:7100");
        return network is null ? builder : builder.WithNetwork(network).WithNetworkAliases(id);
    }

    private IContainer Gateway(INetwork network, int hostPort, string redis) =>
        new ContainerBuilder(PotluckImageFixture.Image)
            .WithImagePullPolicy(_ => false)
            .WithLabel(image.Labels)
            .WithNetwork(network)
            .WithNetworkAliases("gateway")
            .WithBindMount(image.ModelDirectory, "/models", AccessMode.ReadOnly)
            .WithBindMount(image.PoolDirectory, "/pool", AccessMode.ReadOnly)
            .WithCommand("gateway")
            .WithEnvironment(GatewayEnvironment("gateway", redis, $"/models/{PotluckImageFixture.ModelFile}"))
            .WithEnvironment("Potluck__Security__PoolDirectory", "/pool")
            .WithPortBinding(hostPort, 8080)
            .WithWaitStrategy(Wait.ForUnixContainer().UntilContainerIsHealthy(failingStreak: 20, o => o.WithTimeout(StartTimeout)))
            .Build();

    /// <summary>The same environment docker-compose.yml sets (keep them in step): `potluck node` reads Potluck__Node__*.</summary>
    internal static Dictionary<string, string> NodeEnvironment(string id, string span, string redis, string modelPath) => new()
    {
        ["Potluck__Node__ModelPath"] = modelPath,
        ["Potluck__Node__Layers"] = span,
        ["Potluck__Node__AdvertisedHost"] = id,
        ["Potluck__Node__GrpcPort"] = "7100",
        ["Potluck__Node__SiloPort"] = "11111",
        ["Potluck__Node__NodeId"] = id,
        ["Potluck__Cluster__RedisConnectionString"] = redis,
    };

    internal static Dictionary<string, string> GatewayEnvironment(string advertisedHost, string redis, string modelPath) => new()
    {
        ["Potluck__Gateway__ModelPath"] = modelPath,
        ["Potluck__Gateway__ListenAddress"] = "0.0.0.0",
        // Published on the host's loopback only, and the test reads the operator endpoints: open on purpose.
        ["Potluck__Gateway__Insecure"] = "true",
        ["Potluck__Gateway__Port"] = "8080",
        ["Potluck__Gateway__SiloPort"] = "11110",
        ["Potluck__Gateway__AdvertisedHost"] = advertisedHost,
        ["Potluck__Cluster__RedisConnectionString"] = redis,
        ["Potluck__Gateway__ModelName"] = "potluck",
        // F32 hidden states on the wire are bit-exact with one process; F16 may flip near-tied tokens of this random model.
        ["Potluck__Gateway__WireType"] = "F32",
    };

    /// <summary>Waits (bounded) for a container that should fail to exit; returns its exit code and logs.</summary>
    internal static async Task<(long ExitCode, string Logs)> WaitForExitAsync(IContainer container, TimeSpan timeout)
    {
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            var exitCode = await container.GetExitCodeAsync(cancel.Token);
            var (stdout, stderr) = await container.GetLogsAsync();
            return (exitCode, stdout + stderr);
        }
        catch (OperationCanceledException)
        {
            var (stdout, stderr) = await container.GetLogsAsync();
            throw new TimeoutException($"container still running after {timeout.TotalSeconds:0}s (it should have failed fast); logs:\n{stdout}{stderr}");
        }
    }
}
