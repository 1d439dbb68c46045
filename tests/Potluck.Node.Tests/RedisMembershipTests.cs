using System.Diagnostics;
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

/// <summary>
/// Redis membership, the way compose and Helm run nodes: three node processes configured only through
/// Potluck__Node__* environment variables, none of them a seed, find each other through a real redis-server.
/// </summary>
[Collection("timing")]
[ProcessTest]
public sealed class RedisMembershipTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [RedisFact]
    public async Task Nodes_joined_through_redis_serve_a_route_with_single_node_logits()
    {
        await using var redis = await RedisServer.StartAsync();
        var model = TestModels.Small(GgmlType.Q8_0);
        // A cluster id of its own: a shared CI Redis may hold other runs' membership tables.
        var cluster = $"redis-{Guid.NewGuid():N}";
        var spans = new[] { (Id: "ra", Start: 0, End: 1), (Id: "rb", Start: 1, End: 3), (Id: "rc", Start: 3, End: 4) };
        var watch = Stopwatch.StartNew();
        var nodes = new List<NodeProcess>();
        try
        {
            foreach (var span in spans)
            {
                var grpcPort = Ports.Free();
                var environment = new Dictionary<string, string>
                {
                    ["Potluck__Node__ModelPath"] = model,
                    ["Potluck__Node__Layers"] = $"{span.Start}-{span.End}",
                    ["Potluck__Node__NodeId"] = span.Id,
                    ["Potluck__Node__GrpcPort"] = $"{grpcPort}",
                    ["Potluck__Node__SiloPort"] = $"{Ports.Free()}",
                    ["Potluck__Node__GatewayPort"] = $"{Ports.Free()}",
                    ["Potluck__Node__AdvertisedHost"] = "127.0.0.1",
                    ["Potluck__Node__RedisConnectionString"] = redis.Endpoint,
                    ["Potluck__Node__ClusterId"] = cluster,
                };
                nodes.Add(NodeProcess.StartFromEnvironment(output, span.Id, grpcPort, environment));
            }
            foreach (var node in nodes) await node.WaitServingAsync(Timeout);
            output.WriteLine($"3 nodes serving {watch.Elapsed.TotalSeconds:F1} s after start");

            // The client finds the silos' gateways through the same Redis table: no endpoint is given to it.
            using var clientHost = new HostBuilder().UseOrleansClient(client =>
            {
                client.UseRedisClustering(redis.Endpoint);
                client.Configure<ClusterOptions>(o => { o.ClusterId = cluster; o.ServiceId = "potluck"; });
                client.UseTestPoolTls(cluster);
            }).Build();
            using (var startTimeout = new CancellationTokenSource(Timeout)) await clientHost.StartAsync(startTimeout.Token);
            var directory = clientHost.Services.GetRequiredService<IClusterClient>().GetGrain<IPoolDirectoryGrain>(PoolKeys.Default);

            using var lease = SharedModel.Acquire(model);
            var modelId = lease.Model.Info.ModelId;
            // One pool view with all three shards proves one cluster: with no seed and no Redis each node would be alone.
            await WaitForAsync(async () => (await directory.GetView()).HealthyShards(modelId).Count == 3);
            var route = (await directory.GetView()).PlanRoute(modelId, 4, 64)!;
            Assert.Equal(["ra", "rb", "rc"], route.Select(s => s.NodeId));
            output.WriteLine($"pool view complete {watch.Elapsed.TotalSeconds:F1} s after start");

            using var head = new ModelHead(lease.Model, threads: 1);
            using var oracle = new LayerSpan(lease.Model, 0, 4, new SpanOptions { Threads = 1 });
            var open = new OpenSession { SessionId = "redis-1", ModelId = modelId, LayerStart = 0, LayerEnd = 1, MaxTokens = 64, WireType = HiddenType.F32 };
            foreach (var hop in route.Skip(1))
                open.Next.Add(new RouteHop { NodeId = hop.NodeId, Endpoint = hop.GrpcEndpoint, LayerStart = hop.LayerStart, LayerEnd = hop.LayerEnd });
            TestTickets.Sign(open, route[0].NodeId, cluster);
            var run = await ClusterOracleTests.RunSession(route[0].GrpcEndpoint, route[0].NodeId, open, head, oracle, [1, 40, 41, 42], 4, cluster);
            Assert.Equal(run.OracleTokens, run.Tokens);
            Assert.Equal(0, run.MaxLogitDelta);

            await clientHost.StopAsync(new CancellationTokenSource(TimeSpan.FromSeconds(10)).Token);
        }
        finally
        {
            foreach (var node in nodes) node.Dispose();
        }
    }

    private static async Task WaitForAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("condition not met in time");
            await Task.Delay(200);
        }
    }
}
