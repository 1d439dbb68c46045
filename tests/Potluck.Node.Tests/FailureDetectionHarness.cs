using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;
using Potluck.Cluster;
using Potluck.Cluster.Directory;
using Potluck.Protocol.V1;
using Xunit.Abstractions;

namespace Potluck.Node.Tests;

/// <summary>One node process to start: its id and layer span, plus extra environment (Potluck__Node__*).</summary>
public sealed record NodeSpec(string NodeId, int LayerStart, int LayerEnd, IReadOnlyDictionary<string, string>? Environment = null);

/// <summary>
/// Node processes on loopback (the first is the development-clustering primary) and an Orleans client on the
/// first one's gateway port: the pool view and the membership table as a gateway sees them.
/// </summary>
public sealed class ProcessPool : IAsyncDisposable
{
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);

    private readonly IHost _clientHost;

    private ProcessPool(string cluster, List<NodeProcess> nodes, List<int> siloPorts, IHost clientHost)
    {
        Cluster = cluster;
        Nodes = nodes;
        SiloPorts = siloPorts;
        _clientHost = clientHost;
    }

    public string Cluster { get; }
    public List<NodeProcess> Nodes { get; }
    public List<int> SiloPorts { get; }
    public IClusterClient Client => _clientHost.Services.GetRequiredService<IClusterClient>();
    public IPoolDirectoryGrain Directory => Client.GetGrain<IPoolDirectoryGrain>(PoolKeys.Default);

    /// <summary>
    /// Starts the nodes with production membership settings unless <paramref name="fastFailureDetection"/>; every
    /// log line goes to stderr so tests can assert on it (<see cref="NodeProcess.StandardErrorLines"/>).
    /// </summary>
    public static async Task<ProcessPool> StartAsync(ITestOutputHelper output, string model, IReadOnlyList<NodeSpec> specs,
        bool fastFailureDetection = false)
    {
        var cluster = $"fd-{Guid.NewGuid():N}";
        var nodes = new List<NodeProcess>();
        var siloPorts = new List<int>();
        var gatewayPort = Ports.Free();
        try
        {
            string? seed = null;
            foreach (var spec in specs)
            {
                var environment = new Dictionary<string, string>(spec.Environment ?? new Dictionary<string, string>())
                {
                    ["Logging__Console__LogToStandardErrorThreshold"] = "Trace",
                    ["Logging__Console__FormatterOptions__TimestampFormat"] = "HH:mm:ss.fff ",
                };
                var launch = new NodeLaunch(spec.NodeId, model, spec.LayerStart, spec.LayerEnd)
                {
                    Cluster = cluster,
                    Seed = seed,
                    GatewayPort = seed is null ? gatewayPort : null,
                    FastFailureDetection = fastFailureDetection,
                    Environment = environment,
                };
                nodes.Add(NodeProcess.Start(launch, output));
                siloPorts.Add(launch.SiloPort);
                // The primary first: the others join through it.
                if (seed is null) await nodes[0].WaitServingAsync(StartTimeout);
                seed ??= $"127.0.0.1:{launch.SiloPort}";
            }
            foreach (var node in nodes) await node.WaitServingAsync(StartTimeout);

            var clientHost = new HostBuilder().UseOrleansClient(client =>
            {
                client.UseStaticClustering(new IPEndPoint(IPAddress.Loopback, gatewayPort));
                client.Configure<ClusterOptions>(o => { o.ClusterId = cluster; o.ServiceId = "potluck"; });
                client.UseTestPoolTls(cluster);
            }).Build();
            using (var startTimeout = new CancellationTokenSource(StartTimeout)) await clientHost.StartAsync(startTimeout.Token);
            return new ProcessPool(cluster, nodes, siloPorts, clientHost);
        }
        catch
        {
            foreach (var node in nodes) node.Dispose();
            throw;
        }
    }

    /// <summary>The membership table, every entry (dead ones too).</summary>
    public async Task<MembershipEntry[]> MembershipAsync() =>
        await Client.GetGrain<IManagementGrain>(0).GetDetailedHosts(onlyActive: false).WaitAsync(TimeSpan.FromSeconds(30));

    /// <summary>The entry of the silo listening on <paramref name="siloPort"/> (latest generation), if the table has one.</summary>
    public static MembershipEntry? EntryOf(MembershipEntry[] table, int siloPort) =>
        table.Where(e => e.SiloAddress.Endpoint.Port == siloPort).MaxBy(e => e.SiloAddress.Generation);

    /// <summary>An open message for a route through the given nodes (F32 wire: outputs bit-identical to one process).</summary>
    public OpenSession OpenMessage(string sessionId, string modelId, int maxTokens, IReadOnlyList<ShardStatus> hops)
    {
        var open = new OpenSession
        {
            SessionId = sessionId, ModelId = modelId, LayerStart = hops[0].LayerStart, LayerEnd = hops[0].LayerEnd,
            MaxTokens = maxTokens, WireType = HiddenType.F32,
        };
        for (var i = 1; i < hops.Count; i++)
            open.Next.Add(new RouteHop { NodeId = hops[i].NodeId, Endpoint = hops[i].GrpcEndpoint, LayerStart = hops[i].LayerStart, LayerEnd = hops[i].LayerEnd });
        return TestTickets.Sign(open, hops[0].NodeId, Cluster);
    }

    /// <summary>Polls <paramref name="condition"/> every 100 ms; returns how long it took, fails past <paramref name="timeout"/>.</summary>
    public static async Task<TimeSpan> WaitForAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var watch = Stopwatch.StartNew();
        while (!await condition())
        {
            if (watch.Elapsed > timeout) Assert.Fail($"{what}: not within {timeout.TotalSeconds:F0} s");
            await Task.Delay(100);
        }
        return watch.Elapsed;
    }

    public async ValueTask DisposeAsync()
    {
        using (var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(10)))
        {
            try { await _clientHost.StopAsync(stopTimeout.Token); } catch (OperationCanceledException) { }
        }
        _clientHost.Dispose();
        foreach (var node in Nodes) node.Dispose();
    }
}
