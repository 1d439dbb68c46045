using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Potluck.Cli.Tests;

/// <summary>One generated demo model (8 layers) for the exit-code and configuration tests.</summary>
public sealed class DemoModel : IAsyncLifetime
{
    public TempHome Home { get; } = new();
    public string Path => Home.File("demo.gguf");

    public async Task InitializeAsync()
    {
        var run = await PotluckProcess.RunAsync(Home.Path, TimeSpan.FromSeconds(120), "model", "create-demo", "--output", Path);
        Assert.True(run.ExitCode == 0, run.ToString());
    }

    public Task DisposeAsync()
    {
        Home.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary>
/// Every row of the documented exit-code table (docs/cli.md), observed through the real `potluck` executable:
/// 0 ok, 1 runtime failure, 2 usage error, 3 cannot load the model or span, 4 cannot join the pool, 130 interrupted.
/// The node host's own codes (3, 4) come out of the CLI unchanged.
/// </summary>
[ProcessTest]
public sealed class ExitCodeTests(DemoModel model) : IClassFixture<DemoModel>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Zero_means_ok()
    {
        var run = await PotluckProcess.RunAsync(model.Home.Path, Limit, "model", "inspect", model.Path, "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
    }

    [Fact]
    public async Task One_is_a_runtime_failure_of_the_host()
    {
        // The API's port is taken: the gateway host cannot bind it.
        using var holder = new TcpListener(IPAddress.Loopback, 0);
        holder.Start();
        var port = ((IPEndPoint)holder.LocalEndpoint).Port;
        var run = await PotluckProcess.RunAsync(model.Home.Path, Limit, "gateway", "--model", model.Path, "--port", port.ToString(),
            "--silo-port", Ports.Free().ToString(), "--cluster-id", $"exit1-{Guid.NewGuid():N}");
        Assert.True(run.ExitCode == 1, run.ToString());
        Assert.Contains(run.Stderr.Split('\n'), line => line.StartsWith("potluck gateway: error:", StringComparison.Ordinal) && line.Contains(port.ToString()));
    }

    [Fact]
    public async Task Two_is_a_usage_error_from_flags_or_from_the_environment()
    {
        var both = await PotluckProcess.RunAsync(model.Home.Path, Limit, "node", "--model", model.Path, "--layers", "0-2",
            "--host", "10.0.0.1", "--advertise", "10.0.0.2");
        Assert.True(both.ExitCode == 2, both.ToString());
        TextAssert.OneLineError(both, "--host is a deprecated alias of --advertise");

        // The same rule for a value that came from the environment: the message names the variable.
        var start = PotluckProcess.StartInfo(["node", "--model", model.Path, "--layers", "0-2"], model.Home.Path);
        start.Environment["Potluck__Node__Threads"] = "lots";
        var fromEnvironment = await RunAsync(start, Limit);
        Assert.True(fromEnvironment.ExitCode == 2, fromEnvironment.ToString());
        TextAssert.OneLineError(fromEnvironment, "Potluck__Node__Threads");
        Assert.Contains("'lots'", fromEnvironment.Stderr);

        var gatewayStart = PotluckProcess.StartInfo(["gateway"], model.Home.Path);
        gatewayStart.Environment["Potluck__Gateway__ModelPath"] = model.Path;
        gatewayStart.Environment["Potluck__Gateway__Port"] = "eighty";
        var gateway = await RunAsync(gatewayStart, Limit);
        Assert.True(gateway.ExitCode == 2, gateway.ToString());
        TextAssert.OneLineError(gateway, "Potluck__Gateway__Port");
    }

    [Fact]
    public async Task Three_is_a_model_or_span_that_cannot_load()
    {
        var missing = model.Home.File("no-such.gguf");
        var node = await PotluckProcess.RunAsync(model.Home.Path, Limit, "node", "--model", missing, "--layers", "0-2");
        Assert.True(node.ExitCode == 3, node.ToString());
        TextAssert.OneLineError(node, "model file not found");

        // The gateway configured by its environment alone.
        var gatewayStart = PotluckProcess.StartInfo(["gateway"], model.Home.Path);
        gatewayStart.Environment["Potluck__Gateway__ModelPath"] = missing;
        gatewayStart.Environment["Potluck__Gateway__Port"] = Ports.Free().ToString();
        var gateway = await RunAsync(gatewayStart, Limit);
        Assert.True(gateway.ExitCode == 3, gateway.ToString());
        TextAssert.OneLineError(gateway, "model file not found");

        var outside = await PotluckProcess.RunAsync(model.Home.Path, Limit, "node", "--model", model.Path, "--layers", "4:12");
        Assert.True(outside.ExitCode == 3, outside.ToString());
        TextAssert.OneLineError(outside, "is outside the model");
    }

    [Fact]
    public async Task Four_is_a_pool_that_cannot_be_joined_also_when_the_node_host_says_so()
    {
        // Joining by URL: nothing answers there.
        var byUrl = await PotluckProcess.RunAsync(model.Home.Path, Limit, "node", "--model", model.Path, "--join", $"http://127.0.0.1:{Ports.Free()}");
        Assert.True(byUrl.ExitCode == 4, byUrl.ToString());
        TextAssert.OneLineError(byUrl, "cannot reach the gateway");

        // The node host loads its span, then cannot reach Redis: its exit 4 passes through the CLI.
        var deadRedis = $"127.0.0.1:{Ports.Free()}";
        var cluster = $"exit4-{Guid.NewGuid():N}";
        TestPki.InitPool(model.Home.Path, cluster);
        var host = await PotluckProcess.RunAsync(model.Home.Path, Limit, "node", "--model", model.Path, "--layers", "0-8",
            "--redis", $"{deadRedis},connectTimeout=1000", "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(),
            "--threads", "1", "--cluster-id", cluster);
        Assert.True(host.ExitCode == 4, host.ToString());
        Assert.Contains(host.Stderr.Split('\n'), line => line.StartsWith("potluck node: error: cannot join the pool via Redis membership at " + deadRedis, StringComparison.Ordinal));
        Assert.Contains("cannot join the pool", host.Stderr.Split('\n').Single(l => l.StartsWith("potluck: error:", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task OneThirty_is_an_interrupt_before_the_node_serves()
    {
        // A "gateway" that accepts the connection and never answers: the node sits in its join request.
        using var silent = new TcpListener(IPAddress.Loopback, 0);
        silent.Start();
        var port = ((IPEndPoint)silent.LocalEndpoint).Port;
        await using var process = PotluckProcess.Start(model.Home.Path, "node", "--model", model.Path, "--join", $"http://127.0.0.1:{port}");
        using (var accepted = await silent.AcceptTcpClientAsync().WaitAsync(Limit))
        {
            process.Signal(ProcessSignal.Interrupt);
            await process.WaitForExitAsync(TimeSpan.FromSeconds(30));
        }
        var run = new PotluckRun(process.ExitCode, process.StandardOutput, process.StandardError);
        Assert.True(run.ExitCode == 130, run.ToString());
        Assert.Contains("potluck: interrupted", run.Stderr);
    }

    /// <summary>Runs a prepared start (PotluckProcess.StartInfo plus environment) to its exit, bounded.</summary>
    internal static async Task<PotluckRun> RunAsync(ProcessStartInfo start, TimeSpan timeout)
    {
        var run = await ChildProcess.RunAsync(start, timeout);
        return new PotluckRun(run.ExitCode, run.StandardOutput, run.StandardError);
    }
}

/// <summary>
/// The shipped `potluck node` configured the way a container is: Potluck__Node__* and Potluck__Cluster__* environment
/// variables, with flags layered over them.
/// </summary>
[ProcessTest]
public sealed class NodeEnvironmentTests(DemoModel model) : IClassFixture<DemoModel>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task A_node_configured_only_by_environment_variables_serves_its_span()
    {
        var grpcPort = Ports.Free();
        var start = PotluckProcess.StartInfo(["node"], model.Home.Path);
        start.Environment["Potluck__Node__ModelPath"] = model.Path;
        start.Environment["Potluck__Node__Layers"] = "2:6";
        var cluster = ContainerEnvironment(start, grpcPort);
        await using var node = StartNode(start);
        await node.WaitForOutputAsync("Node env-node serving layers [2, 6) of 8", Limit);
        Assert.Contains($"gRPC https://127.0.0.1:{grpcPort}", node.Output);

        // The node answers on the port the environment chose: GET /healthz (behind the Stage service's mutual TLS) reports its silo active.
        using var http = TestPki.HttpClient("env-node", cluster);
        var health = await http.GetStringAsync($"https://127.0.0.1:{grpcPort}/healthz");
        Assert.Equal("Healthy", health);
    }

    [Fact]
    public async Task Flags_override_the_environment_and_the_deprecated_host_says_what_it_means()
    {
        var grpcPort = Ports.Free();
        var start = PotluckProcess.StartInfo(["node", "--layers", "0-8", "--node-id", "flag-node", "--host", "127.0.0.1"], model.Home.Path);
        start.Environment["Potluck__Node__ModelPath"] = model.Path;
        start.Environment["Potluck__Node__Layers"] = "0-4";
        ContainerEnvironment(start, grpcPort);
        await using var node = StartNode(start);
        await node.WaitForOutputAsync("Node flag-node serving layers [0, 8) of 8", Limit);
        Assert.Contains($"gRPC https://127.0.0.1:{grpcPort}", node.Output);
        Assert.Contains("potluck: warning: --host is deprecated; on `potluck node` it means --advertise 127.0.0.1", node.StandardError);
    }

    /// <summary>The rest of a container's node environment: id, ports, one thread and a fresh cluster id.</summary>
    private static string ContainerEnvironment(ProcessStartInfo start, int grpcPort)
    {
        var cluster = $"env-{Guid.NewGuid():N}";
        start.Environment["Potluck__Node__NodeId"] = "env-node";
        start.Environment["Potluck__Node__GrpcPort"] = grpcPort.ToString();
        start.Environment["Potluck__Node__SiloPort"] = Ports.Free().ToString();
        start.Environment["Potluck__Node__Threads"] = "1";
        start.Environment["Potluck__Cluster__ClusterId"] = cluster;
        // The node issues its certificate from the test run's CA of that pool (a container mounts its credential instead).
        foreach (var (key, value) in TestPki.Environment(cluster)) start.Environment[key] = value;
        return cluster;
    }

    /// <summary>A long-running `potluck node` with its own environment: SIGTERM on dispose, then killed.</summary>
    private static ChildProcess StartNode(ProcessStartInfo start)
    {
        var node = ChildProcess.Start(start, "potluck node");
        node.StopGrace = PotluckProcess.StopGrace;
        return node;
    }
}
