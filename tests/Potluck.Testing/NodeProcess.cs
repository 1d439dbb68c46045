using System.Globalization;
using Grpc.Core;
using Grpc.Net.Client;
using Potluck.Protocol.V1;
using Xunit.Abstractions;
using GrpcStage = Potluck.Protocol.V1.Stage;

namespace Potluck.Testing;

/// <summary>
/// How to start one node test host (tests/Potluck.Node.TestHost): its flags. Ports default to free loopback ports;
/// <see cref="Environment"/> adds Potluck__Node__* (the container way) and logging settings.
/// </summary>
public sealed record NodeLaunch(string NodeId, string ModelPath, int LayerStart, int LayerEnd)
{
    public int GrpcPort { get; init; } = Ports.Free();
    public int SiloPort { get; init; } = Ports.Free();

    /// <summary>The primary silo to join through (host:port); null makes this node the development-clustering primary.</summary>
    public string? Seed { get; init; }

    /// <summary>An Orleans gateway port for clients (the primary's, in tests that watch the pool from outside).</summary>
    public int? GatewayPort { get; init; }

    public string? Cluster { get; init; }
    public bool FastFailureDetection { get; init; }

    /// <summary>How long a SIGTERMed node drains its sessions (Potluck__Node__DrainTimeout).</summary>
    public TimeSpan? DrainTimeout { get; init; }

    public IReadOnlyDictionary<string, string>? Environment { get; init; }

    public IReadOnlyList<string> Arguments()
    {
        var args = new List<string>
        {
            "--model", ModelPath, "--layers", $"{LayerStart}:{LayerEnd}", "--node-id", NodeId,
            "--grpc-port", $"{GrpcPort}", "--silo-port", $"{SiloPort}",
        };
        if (Cluster is not null) args.AddRange(["--cluster", Cluster]);
        if (GatewayPort is { } gateway) args.AddRange(["--gateway-port", $"{gateway}"]);
        if (Seed is not null) args.AddRange(["--seed", Seed]);
        if (FastFailureDetection) args.Add("--fast");
        return args;
    }

    public IReadOnlyDictionary<string, string> EnvironmentVariables()
    {
        // Members of the test run's CA for this cluster, unless the test gives its own security settings.
        var environment = new Dictionary<string, string>(TestPki.Environment(Cluster ?? TestPki.DefaultPool));
        foreach (var (key, value) in Environment ?? new Dictionary<string, string>()) environment[key] = value;
        if (DrainTimeout is { } drain) environment["Potluck__Node__DrainTimeout"] = drain.TotalSeconds.ToString(CultureInfo.InvariantCulture);
        return environment;
    }
}

/// <summary>A real node process (the node test host) on loopback: its gRPC endpoint, signals and its output.</summary>
public sealed class NodeProcess : ChildProcess
{
    private NodeProcess(string nodeId, int grpcPort, int siloPort, IEnumerable<string> args,
        IReadOnlyDictionary<string, string>? environment, ITestOutputHelper? output, string poolId)
        : base(StartInfo("dotnet", ["exec", TestHostDll, .. args], environment), nodeId, output)
    {
        NodeId = nodeId;
        PoolId = poolId;
        GrpcPort = grpcPort;
        SiloPort = siloPort;
    }

    public static string TestHostDll => Dll.Value;

    private static readonly Lazy<string> Dll = new(() => RepositoryLayout.BuildOutput("tests/Potluck.Node.TestHost", "Potluck.Node.TestHost.dll"));

    public string NodeId { get; }

    /// <summary>The pool (cluster id) whose test CA issued this node's certificate.</summary>
    public string PoolId { get; }
    public int GrpcPort { get; }

    /// <summary>The silo port, or 0 when the environment chose it (<see cref="StartFromEnvironment"/>).</summary>
    public int SiloPort { get; }

    /// <summary>The node's gRPC endpoint (https://127.0.0.1:port; mutual TLS with the pool's certificates).</summary>
    public string Endpoint => $"https://127.0.0.1:{GrpcPort}";

    /// <summary>A data-plane channel to this node (<see cref="TestPki.Channel"/>); the caller disposes it.</summary>
    public GrpcChannel Channel() => TestPki.Channel(Endpoint, NodeId, PoolId);

    public static NodeProcess Start(NodeLaunch launch, ITestOutputHelper? output = null) =>
        new(launch.NodeId, launch.GrpcPort, launch.SiloPort, launch.Arguments(), launch.EnvironmentVariables(), output, launch.Cluster ?? TestPki.DefaultPool);

    /// <summary>A member of a development-clustered pool, logging warnings only (the gateway tests' nodes).</summary>
    public static NodeProcess Start(string modelPath, int start, int end, string nodeId, string? seed, int? siloPort = null,
        bool fastFailureDetection = false, TimeSpan? drainTimeout = null, ITestOutputHelper? output = null) =>
        Start(new NodeLaunch(nodeId, modelPath, start, end)
        {
            SiloPort = siloPort ?? Ports.Free(),
            Seed = seed,
            FastFailureDetection = fastFailureDetection,
            DrainTimeout = drainTimeout,
            Environment = new Dictionary<string, string> { ["Logging__LogLevel__Default"] = "Warning" },
        }, output);

    /// <summary>
    /// A node configured only through <paramref name="environment"/> (Potluck__Node__*, as compose and Helm do):
    /// no flags. <paramref name="grpcPort"/> is the port that environment gives it.
    /// </summary>
    public static NodeProcess StartFromEnvironment(ITestOutputHelper? output, string nodeId, int grpcPort,
        IReadOnlyDictionary<string, string> environment)
    {
        var cluster = environment.GetValueOrDefault("Potluck__Node__ClusterId") ?? environment.GetValueOrDefault("Potluck__Cluster__ClusterId") ?? TestPki.DefaultPool;
        var merged = new Dictionary<string, string>(TestPki.Environment(cluster));
        foreach (var (key, value) in environment) merged[key] = value;
        return new(nodeId, grpcPort, 0, [], merged, output, cluster);
    }

    /// <summary>Waits until the Stage service answers Describe; fails if the process exits first.</summary>
    public Task WaitServingAsync(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        return WaitUntilAsync(async () =>
        {
            try
            {
                await DescribeAsync(TimeSpan.FromSeconds(2));
                return true;
            }
            catch (RpcException) when (DateTime.UtcNow < deadline)
            {
                return false;
            }
        }, timeout, "serving gRPC");
    }

    /// <summary>Live data-plane view of this node (open sessions, free KV).</summary>
    public Task<StageDescription> DescribeAsync() => DescribeAsync(TimeSpan.FromSeconds(10));

    private async Task<StageDescription> DescribeAsync(TimeSpan deadline)
    {
        using var channel = Channel();
        return await new GrpcStage.StageClient(channel).DescribeAsync(new DescribeRequest(), deadline: DateTime.UtcNow + deadline);
    }

    /// <summary>SIGTERM: a graceful leave (the node drains, then exits), the way Kubernetes, compose and serve stop it.</summary>
    public void Terminate() => Signal(ProcessSignal.Terminate);

    /// <summary>SIGSTOP: the node hangs (a frozen machine): connections stay open, nothing answers.</summary>
    public void Freeze() => Signal(ProcessSignal.Stop);

    /// <summary>SIGCONT after <see cref="Freeze"/>.</summary>
    public void Thaw() => Signal(ProcessSignal.Continue);
}
