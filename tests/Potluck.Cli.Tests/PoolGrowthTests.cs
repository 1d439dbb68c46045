using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Potluck.Cluster.Joining;
using Potluck.Node.Joining;
using Xunit.Abstractions;

namespace Potluck.Cli.Tests;

/// <summary>
/// Nodes that choose their own span, through the real CLI against a real gateway: one by one without --layers they
/// cover the model (a node still loading already counts, through its announcement), then further nodes become replicas
/// where Petals' rule says; a --rebalance node moves to where it is needed and loads the new span before leaving the old.
/// </summary>
[ProcessTest]
public sealed class PoolGrowthTests : IClassFixture<JoinModels>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(120);
    private const int ModelLayers = 8;
    private readonly JoinModels _models;
    private readonly ITestOutputHelper _output;

    public PoolGrowthTests(JoinModels models, ITestOutputHelper output)
    {
        _models = models;
        _output = output;
    }

    /// <summary>Shows what each node measured and chose (the figures the docs quote).</summary>
    private void Report(string name, ChildProcess node)
    {
        foreach (var line in node.Output.Split('\n'))
        {
            if (line.Contains("speed probe", StringComparison.Ordinal) || line.Contains("chose layers", StringComparison.Ordinal)
                || line.Contains("rebalanc", StringComparison.Ordinal) || line.Contains("serves layers", StringComparison.Ordinal)
                || line.Contains(" left after ", StringComparison.Ordinal) || line.Contains("measured", StringComparison.Ordinal))
                _output.WriteLine($"{name}: {line}");
        }
    }

    [Fact]
    public async Task NodesJoiningOneByOneCoverThePoolThenBecomeReplicasByThroughput()
    {
        var (gateway, http, url) = await StartGatewayAsync();
        await using var _ = gateway;
        using var __ = http;
        var nodes = new List<ChildProcess>();
        try
        {
            // Three nodes of at most 3 layers each, the next started as soon as the previous announced itself
            // (it is still loading then): the announcement keeps the second from choosing the first one's layers.
            var expected = new[] { (0, 3), (3, 6), (6, 8) };
            var ids = new List<string>();
            for (var i = 0; i < expected.Length; i++)
            {
                var (node, id) = await StartChoosingNodeAsync(url);
                nodes.Add(node);
                ids.Add(id);
                await JoinTests.WaitUntilAsync(http, "api/pool/join", body => body.Contains($"\"node_id\":\"{id}\"", StringComparison.Ordinal), Limit, node);
            }
            var ready = await JoinTests.WaitUntilAsync(http, "readyz", _ => true, Limit, nodes[^1]);
            for (var i = 0; i < expected.Length; i++)
            {
                Assert.Contains($"{ids[i]} [{expected[i].Item1}, {expected[i].Item2})", ready);
                Assert.Contains($"chose layers [{expected[i].Item1}, {expected[i].Item2})", nodes[i].Output);
            }
            Assert.Contains($"announced to the gateway as {ids[1]} joining", nodes[1].Output);
            // Each announcement ends with that node's first shard report: nothing is left "joining".
            await JoinTests.WaitUntilAsync(http, "api/pool/join", body => !PoolJoinInfo.Parse(body).Spans.Any(s => s.Joining), TimeSpan.FromSeconds(30), nodes[^1]);
            Assert.DoesNotContain("\"joining\"", await http.GetStringAsync("api/pool"));
            // One probe for the machine and model, then the cached figure.
            Assert.Contains("speed probe: measured", nodes[0].Output);
            Assert.Contains("speed probe: reused", nodes[1].Output);
            Assert.Contains("speed probe: reused", nodes[2].Output);

            // Full: the next nodes replicate the window whose weakest layer has the least total throughput, as the
            // chooser computes it from the join document they read (each span's measured speed is fixed for its life).
            var capacity = new NodeCapacity(Enumerable.Repeat(1L, ModelLayers).ToArray(), ModelLayers, maxLayers: 3);
            for (var replica = 0; replica < 2; replica++)
            {
                await JoinTests.WaitUntilAsync(http, "api/pool/join", body => CountHealthy(body) == nodes.Count, Limit, nodes[^1]);
                var pool = PoolJoinInfo.Parse(await http.GetStringAsync("api/pool/join"));
                var rule = SpanChooser.Choose(ModelLayers, pool.Spans, capacity);
                var (node, id) = await StartChoosingNodeAsync(url);
                nodes.Add(node);
                var listed = await JoinTests.WaitUntilAsync(http, "api/pool/join", body => HealthySpanOf(body, id) is not null, Limit, node);
                Assert.Equal((rule.Start, rule.End), HealthySpanOf(listed, id));
                Assert.Contains($"chose layers [{rule.Start}, {rule.End})", node.Output);
                Assert.Contains("least total throughput", node.Output);
            }
            await JoinTests.WaitUntilAsync(http, "readyz", _ => true, Limit, gateway);

            for (var i = 0; i < nodes.Count; i++) Report($"node {i + 1}", nodes[i]);
            await CheckAnnouncementsAsync(http, JsonDocument.Parse(await http.GetStringAsync("api/pool/join")).RootElement.GetProperty("model").GetProperty("id").GetString()!);
        }
        finally
        {
            foreach (var node in nodes) await node.DisposeAsync();
        }
    }

    [Fact]
    public async Task ARebalancingNodeMovesToTheWeakerSpanWithoutLeavingAHole()
    {
        var (gateway, http, url) = await StartGatewayAsync();
        await using var _ = gateway;
        using var __ = http;
        await using var front = StartFixedNode(url, "0:4", "front");
        await using var back = StartFixedNode(url, "4:8", "back");
        await JoinTests.WaitUntilAsync(http, "api/pool/join", body => CountHealthy(body) == 2, Limit, back);

        var port = FreePortPair();
        var silo = FreePortPair();
        await using var mover = PotluckProcess.Start(_models.Home.Path, "node", "--model", _models.Pool, "--join", url, "--max-layers", "4", "--memory", "1G",
            "--rebalance", "--rebalance-every", "1", "--port", port.ToString(), "--silo-port", silo.ToString(), "--threads", "1", "--node-id", "mover");
        await mover.WaitForOutputAsync("checking the pool every", Limit);
        var first = HealthySpanOf(await http.GetStringAsync("api/pool/join"), "mover");
        Assert.True(first is (0, 4) or (4, 8), $"mover holds {first}");
        var (start, end) = first!.Value;
        var other = start == 0 ? (4, 8) : (0, 4);

        // Nothing to gain yet: one node per span each side of the mover's. A replica of the mover's span makes it
        // three against one, and moving doubles the weakest layer's throughput.
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.DoesNotContain("rebalancing:", mover.Output);
        var watch = WatchCoverageAsync(http, TimeSpan.FromSeconds(90), requireReady: true);
        await using var replica = StartFixedNode(url, $"{start}-{end}", "replica");
        await mover.WaitForOutputAsync("moved to layers", Limit);
        var coverage = await StopWatchingAsync(watch);

        Report("mover", mover);
        _output.WriteLine($"coverage polls during the move: {coverage.Polls}");
        // The old child withdrew its shard on the way out; the gateway's view drops it at its next refresh.
        var after = await JoinTests.WaitUntilAsync(http, "api/pool/join", body => HealthySpanOf(body, "mover") is null, TimeSpan.FromSeconds(30), mover);
        Assert.Equal<(int, int)?>(other, HealthySpanOf(after, "mover-b"));
        // The new span served before the old one was asked to leave, and the pool could route all along.
        var output = mover.Output;
        Assert.True(output.IndexOf("mover-b serves layers", StringComparison.Ordinal) < output.IndexOf("stopping mover ", StringComparison.Ordinal), output);
        Assert.True(coverage.Polls > 5, $"only {coverage.Polls} polls");
        Assert.True(coverage.Problems.Count == 0, string.Join("\n", coverage.Problems) + "\n" + output);
    }

    [Fact]
    public async Task ARebalancingNodeWhoseSpanGainsAReplicaMovesToTheLayersNobodyHolds()
    {
        var (gateway, http, url) = await StartGatewayAsync();
        await using var _ = gateway;
        using var __ = http;
        await using var front = StartFixedNode(url, "0:2", "front");
        await JoinTests.WaitUntilAsync(http, "api/pool/join", body => CountHealthy(body) == 1, Limit, front);

        var port = FreePortPair();
        var silo = FreePortPair();
        await using var mover = PotluckProcess.Start(_models.Home.Path, "node", "--model", _models.Pool, "--join", url, "--max-layers", "4", "--memory", "1G",
            "--rebalance", "--rebalance-every", "1", "--port", port.ToString(), "--silo-port", silo.ToString(), "--threads", "1", "--node-id", "mover");
        await mover.WaitForOutputAsync("checking the pool every", Limit);
        // Four layers at most: the largest gap [2,8) from its start. It is the only holder of [2,6), so it stays.
        Assert.Equal<(int, int)?>((2, 6), HealthySpanOf(await http.GetStringAsync("api/pool/join"), "mover"));
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.DoesNotContain("rebalancing:", mover.Output);
        using (var notReady = await http.GetAsync("readyz")) Assert.Equal(HttpStatusCode.ServiceUnavailable, notReady.StatusCode);

        // Another node takes [2,6) as well: the mover's layers stay held without it, and [6,8) has no holder.
        var watch = WatchCoverageAsync(http, TimeSpan.FromSeconds(90), requireReady: false);
        await using var middle = StartFixedNode(url, "2:6", "middle");
        await mover.WaitForOutputAsync("moved to layers", Limit);
        var coverage = await StopWatchingAsync(watch);
        Report("mover", mover);

        Assert.Contains("the pool lacks a chain: layers [6, 8) complete the pool's chain", mover.Output);
        var ready = await JoinTests.WaitUntilAsync(http, "readyz", _ => true, Limit, mover);
        Assert.Contains("mover-b [6, 8)", ready);
        Assert.True(coverage.Polls > 5, $"only {coverage.Polls} polls");
        Assert.True(coverage.Problems.Count == 0, string.Join("\n", coverage.Problems) + "\n" + mover.Output);
    }

    private async Task<(ChildProcess Gateway, HttpClient Http, string Url)> StartGatewayAsync()
    {
        var gateway = GatewayProcess.Start(_models.Home.Path, _models.Pool);
        // A member too (named ghost, the node CheckAnnouncementsAsync announces): the pool's spans are for members only.
        var http = gateway.CreateMemberClient("ghost");
        await JoinTests.WaitUntilAsync(http, "healthz", _ => true, Limit, gateway);
        return (gateway, http, gateway.Url);
    }

    private async Task<(ChildProcess Node, string Id)> StartChoosingNodeAsync(string url)
    {
        // Default ids and ports: each node claims its own HOSTNAME-N and free ports; its id is read from what it announced.
        var node = PotluckProcess.Start(_models.Home.Path, "node", "--model", _models.Pool, "--join", url, "--max-layers", "3", "--memory", "1G",
            "--threads", "1");
        string line;
        try
        {
            line = await node.WaitForOutputAsync("announced to the gateway as ", Limit);
        }
        catch
        {
            await node.DisposeAsync();
            throw;
        }
        var id = line[(line.IndexOf("announced to the gateway as ", StringComparison.Ordinal) + "announced to the gateway as ".Length)..].Split(' ')[0];
        return (node, id);
    }

    private ChildProcess StartFixedNode(string url, string layers, string id) =>
        PotluckProcess.Start(_models.Home.Path, "node", "--model", _models.Pool, "--join", url, "--layers", layers, "--node-id", id,
            "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(), "--threads", "1");

    /// <summary>POST /api/pool/announce: bad bodies get OpenAI-style 400s; a good one shows as joining and is never routed to.</summary>
    private static async Task CheckAnnouncementsAsync(HttpClient http, string modelId)
    {
        async Task<(HttpStatusCode Status, JsonElement Body)> Post(string body)
        {
            using var content = new StringContent(body, Encoding.UTF8, "application/json");
            using var response = await http.PostAsync("api/pool/announce", content);
            return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.Clone());
        }
        string Body(string nodeId = "ghost", object? model = null, object? start = null, object? end = null, string endpoint = "http://127.0.0.1:7999") =>
            JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["node_id"] = nodeId, ["model_id"] = model ?? modelId, ["start"] = start ?? 0, ["end"] = end ?? ModelLayers, ["endpoint"] = endpoint,
            });

        foreach (var (body, param, code) in new[]
        {
            ("not json", (string?)null, "invalid_json"),
            (Body(nodeId: "a/b"), "node_id", "invalid_value"),
            (Body(model: "another-model"), "model_id", "model_mismatch"),
            (Body(start: "0"), "start", "invalid_type"),
            (Body(end: 9), "end", "invalid_value"),
            (Body(endpoint: "grpc://x"), "endpoint", "invalid_value"),
            ("{\"node_id\":\"ghost\"}", "model_id", "missing_required_parameter"),
        })
        {
            var (status, error) = await Post(body);
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.Equal("invalid_request_error", error.GetProperty("error").GetProperty("type").GetString());
            Assert.Equal(code, error.GetProperty("error").GetProperty("code").GetString());
            if (param is not null) Assert.Equal(param, error.GetProperty("error").GetProperty("param").GetString());
        }

        var (ok, accepted) = await Post(Body());
        Assert.Equal(HttpStatusCode.OK, ok);
        Assert.Equal("joining", accepted.GetProperty("state").GetString());
        using var pool = JsonDocument.Parse(await http.GetStringAsync("api/pool"));
        var ghost = pool.RootElement.GetProperty("nodes").EnumerateArray().Single(n => n.GetProperty("id").GetString() == "ghost");
        Assert.Equal("joining", ghost.GetProperty("state").GetString());
        var join = PoolJoinInfo.Parse(await http.GetStringAsync("api/pool/join"));
        var listed = join.Spans.Single(s => s.NodeId == "ghost");
        Assert.True(listed.Joining);
        Assert.False(listed.Healthy);
        // Routing ignores it: still ready, and the route does not name it.
        var ready = await http.GetStringAsync("readyz");
        Assert.DoesNotContain("ghost", ready);
    }

    private sealed record CoverageWatch(Task<(int Polls, List<string> Problems)> Task, CancellationTokenSource Stop);

    /// <summary>
    /// Polls /readyz and /api/join until stopped: every answer must have a healthy "mover" or "mover-b", and with
    /// <paramref name="requireReady"/> the pool must be ready at every poll.
    /// </summary>
    private static CoverageWatch WatchCoverageAsync(HttpClient http, TimeSpan limit, bool requireReady)
    {
        var stop = new CancellationTokenSource(limit);
        async Task<(int, List<string>)> Run()
        {
            var problems = new List<string>();
            var polls = 0;
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    using var readyz = await http.GetAsync("readyz", stop.Token);
                    var body = await http.GetStringAsync("api/pool/join", stop.Token);
                    polls++;
                    if (requireReady && readyz.StatusCode != HttpStatusCode.OK) problems.Add($"{DateTime.UtcNow:HH:mm:ss.fff} readyz {(int)readyz.StatusCode}");
                    if (HealthySpanOf(body, "mover") is null && HealthySpanOf(body, "mover-b") is null)
                        problems.Add($"{DateTime.UtcNow:HH:mm:ss.fff} neither mover nor mover-b serves: {body}");
                    await Task.Delay(150, stop.Token);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
            return (polls, problems);
        }
        return new CoverageWatch(Run(), stop);
    }

    private static async Task<(int Polls, List<string> Problems)> StopWatchingAsync(CoverageWatch watch)
    {
        await watch.Stop.CancelAsync();
        var result = await watch.Task;
        watch.Stop.Dispose();
        return result;
    }

    private static int CountHealthy(string joinDocument)
    {
        var count = 0;
        foreach (var span in PoolJoinInfo.Parse(joinDocument).Spans)
            if (span.Healthy && !span.Joining) count++;
        return count;
    }

    private static (int, int)? HealthySpanOf(string joinDocument, string nodeId)
    {
        foreach (var span in PoolJoinInfo.Parse(joinDocument).Spans)
            if (span.NodeId == nodeId && span.Healthy && !span.Joining) return (span.Start, span.End);
        return null;
    }

    /// <summary>A port P with P + 1 free too: a rebalancing node's second span uses the next port.</summary>
    private static int FreePortPair()
    {
        for (var attempt = 0; attempt < 50; attempt++)
        {
            var port = Ports.Free();
            if (port >= 65535) continue;
            try
            {
                using var next = new TcpListener(IPAddress.Loopback, port + 1);
                next.Start();
                return port;
            }
            catch (SocketException)
            {
            }
        }
        throw new InvalidOperationException("no two consecutive free ports");
    }
}
