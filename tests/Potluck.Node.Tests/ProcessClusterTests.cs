using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;
using Potluck.Cluster;
using Potluck.Cluster.Directory;
using Potluck.Protocol.V1;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Node.Compute;
using Xunit.Abstractions;

namespace Potluck.Node.Tests;

/// <summary>Three node processes on loopback: oracle parity, then SIGKILL of one and SIGTERM of another.</summary>
[Collection("timing")]
[ProcessTest]
public sealed class ProcessClusterTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    private NodeProcess StartNode(string model, string nodeId, int start, int end, string cluster, string? seed, int siloPort, int gatewayPort)
    {
        return NodeProcess.Start(new NodeLaunch(nodeId, model, start, end)
        {
            SiloPort = siloPort,
            Cluster = cluster,
            Seed = seed,
            GatewayPort = gatewayPort > 0 ? gatewayPort : null,
            FastFailureDetection = true,
        }, output);
    }

    private static Task WaitServingAsync(NodeProcess node) => node.WaitServingAsync(Timeout);

    private static async Task<TimeSpan> WaitForAsync(Func<Task<bool>> condition)
    {
        var watch = Stopwatch.StartNew();
        while (!await condition())
        {
            if (watch.Elapsed > Timeout) throw new TimeoutException("condition not met in time");
            await Task.Delay(200);
        }
        return watch.Elapsed;
    }

    [Fact]
    public async Task Three_node_processes_match_the_single_node_and_survive_a_sigkill()
    {
        var model = TestModels.Small(GgmlType.Q8_0);
        var cluster = $"proc-{Guid.NewGuid():N}";
        var siloA = Ports.Free();
        var gatewayA = Ports.Free();
        var gatewayC = Ports.Free();
        using var a = StartNode(model, "pa", 0, 1, cluster, null, siloA, gatewayA);
        await WaitServingAsync(a);
        using var b = StartNode(model, "pb", 1, 3, cluster, $"127.0.0.1:{siloA}", Ports.Free(), 0);
        using var c = StartNode(model, "pc", 3, 4, cluster, $"127.0.0.1:{siloA}", Ports.Free(), gatewayC);
        await WaitServingAsync(b);
        await WaitServingAsync(c);

        using var clientHost = new HostBuilder().UseOrleansClient(client =>
        {
            client.UseStaticClustering(new IPEndPoint(IPAddress.Loopback, gatewayA), new IPEndPoint(IPAddress.Loopback, gatewayC));
            client.Configure<ClusterOptions>(o => { o.ClusterId = cluster; o.ServiceId = "potluck"; });
            client.UseTestPoolTls(cluster);
        }).Build();
        using (var startTimeout = new CancellationTokenSource(Timeout)) await clientHost.StartAsync(startTimeout.Token);
        var directory = clientHost.Services.GetRequiredService<IClusterClient>().GetGrain<IPoolDirectoryGrain>(PoolKeys.Default);

        using var lease = SharedModel.Acquire(model);
        var modelId = lease.Model.Info.ModelId;
        await WaitForAsync(async () => (await directory.GetView()).HealthyShards(modelId).Count == 3);
        var route = (await directory.GetView()).PlanRoute(modelId, 4, 64)!;
        Assert.Equal(["pa", "pb", "pc"], route.Select(s => s.NodeId));

        using var head = new ModelHead(lease.Model, threads: 1);
        using var oracle = new LayerSpan(lease.Model, 0, 4, new SpanOptions { Threads = 1 });
        using var prefix = new LayerSpan(lease.Model, 0, 3, new SpanOptions { Threads = 1 });

        OpenSession OpenVia(string sessionId, IReadOnlyList<ShardStatus> hops)
        {
            var open = new OpenSession { SessionId = sessionId, ModelId = modelId, LayerStart = hops[0].LayerStart, LayerEnd = hops[0].LayerEnd, MaxTokens = 64, WireType = HiddenType.F32 };
            for (var i = 1; i < hops.Count; i++)
                open.Next.Add(new RouteHop { NodeId = hops[i].NodeId, Endpoint = hops[i].GrpcEndpoint, LayerStart = hops[i].LayerStart, LayerEnd = hops[i].LayerEnd });
            return TestTickets.Sign(open, hops[0].NodeId, cluster);
        }

        // Parity: two concurrent sessions across three processes, F32 on the wire → identical logits.
        var runs = await Task.WhenAll(
            ClusterOracleTests.RunSession(route[0].GrpcEndpoint, route[0].NodeId, OpenVia("p-1", route), head, oracle, [1, 40, 41, 42], 5, cluster),
            ClusterOracleTests.RunSession(route[0].GrpcEndpoint, route[0].NodeId, OpenVia("p-2", route), head, oracle, [1, 200, 3], 5, cluster));
        foreach (var run in runs)
        {
            Assert.Equal(run.OracleTokens, run.Tokens);
            Assert.Equal(0, run.MaxLogitDelta);
        }

        // A session served by pc alone (its input computed here by layers 0-3), alive across the kill.
        var width = head.Width;
        var last = route[2];
        using var cChannel = Channels.For(last.GrpcEndpoint, last.NodeId, cluster);
        await using var direct = await Channels.OpenAsync(cChannel, OpenVia("direct", [last]), width);
        oracle.OpenSession("direct", 64);
        prefix.OpenSession("direct", 64);
        var position = 0;
        async Task DirectStepAsync(int token)
        {
            var hidden = new float[width];
            var mid = new float[width];
            var expected = new float[width];
            var got = new float[width];
            head.Embed([token], hidden);
            prefix.Forward([new SpanSegment("direct", position, 1)], hidden, mid);
            oracle.Forward([new SpanSegment("direct", position, 1, LastRowOnly: true)], hidden, expected);
            await direct.StepAsync(mid, 1, position, true, got, TimeSpan.FromSeconds(30));
            position++;
            Assert.Equal(expected, got);
        }
        await DirectStepAsync(1);
        await DirectStepAsync(77);

        // SIGKILL the middle node: the pool view must stop offering it within a bounded time.
        b.Kill();
        var markedIn = await WaitForAsync(async () =>
            !(await directory.GetView()).Shards.Any(s => s.Status.NodeId == "pb" && s.Healthy));
        output.WriteLine($"pool view marked pb gone/unhealthy {markedIn.TotalSeconds:F1} s after SIGKILL");
        Assert.True(markedIn < TimeSpan.FromSeconds(20));
        Assert.Null((await directory.GetView()).PlanRoute(modelId, 4, 64));

        // The route through pb now fails fast with a clear status; pc keeps serving its own session.
        var broken = await Assert.ThrowsAnyAsync<Grpc.Core.RpcException>(async () =>
        {
            using var aChannel = Channels.For(route[0].GrpcEndpoint, route[0].NodeId, cluster);
            await using var client = await Channels.OpenAsync(aChannel, OpenVia("after-kill", route), width);
        });
        output.WriteLine($"route through the killed node: {broken.StatusCode} {broken.Status.Detail}");
        Assert.NotEqual(Grpc.Core.StatusCode.OK, broken.StatusCode);
        await DirectStepAsync(5);
        await DirectStepAsync(6);
        await direct.CloseAsync(TimeSpan.FromSeconds(30));

        // SIGTERM: clean shutdown, exit code 0, shard withdrawn.
        c.Terminate();
        Assert.Equal(0, await c.WaitForExitAsync(Timeout));
        await WaitForAsync(async () => (await directory.GetView()).Shards.All(s => s.Status.NodeId != "pc"));
        await clientHost.StopAsync(new CancellationTokenSource(TimeSpan.FromSeconds(10)).Token);
    }
}
