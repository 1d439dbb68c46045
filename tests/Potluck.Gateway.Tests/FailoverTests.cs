using System.Diagnostics;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;
using Potluck.Protocol.V1;
using Potluck.Inference.Gguf;
using Xunit.Abstractions;

namespace Potluck.Gateway.Tests;

/// <summary>
/// A pool with a replica: [0,2) on one node, [2,4) on two. The replica serving a streamed session is SIGKILLed
/// mid-stream; the stream must go on (re-planned onto the other replica, replayed from the token ids) with the
/// text of a run without the fault. Own processes, not the shared pool fixture, because a node dies.
/// </summary>
[Collection(FailoverCollection.Name)]
[ProcessTest]
public sealed class FailoverTests(ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan SettleTimeout = TimeSpan.FromSeconds(20);
    private const int MaxTokens = 400;
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(0.5);
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(5);
    // Kill after this many text chunks: the replay then covers the prompt plus generated tokens, not the prompt only.
    private const int KillAfterChunks = 24;

    private readonly string _modelPath = TestModels.Small(GgmlType.Q8_0);
    private readonly List<NodeProcess> _nodes = [];
    private GatewayApp _gateway = null!;
    private HttpClient _http = null!;
    private string _model = "";

    public async Task InitializeAsync()
    {
        try
        {
            var primarySilo = Ports.Free();
            var seed = $"127.0.0.1:{primarySilo}";
            _nodes.Add(NodeProcess.Start(_modelPath, 0, 2, "front", null, primarySilo));
            // A short drain: the SIGTERM test's stream outlasts it, so the leaving node hands its session off.
            _nodes.Add(NodeProcess.Start(_modelPath, 2, 4, "back-a", seed, drainTimeout: DrainTimeout));
            _nodes.Add(NodeProcess.Start(_modelPath, 2, 4, "back-b", seed, drainTimeout: DrainTimeout));
            // F16, the default wire: the replay repeats the original steps, so even half-precision hops give the same text.
            _gateway = GatewayHost.Build(new GatewayOptions
            {
                Security = TestPki.Settings(),
                ModelPath = _modelPath,
                Port = 0,
                SiloPort = Ports.Free(),
                PrimarySiloEndpoint = seed,
                WireType = HiddenType.F16,
                Threads = 1,
                PoolRefreshPeriod = TimeSpan.FromMilliseconds(500),
                GatewayId = "gateway-failover",
                // Short enough for the frozen-node test to time out a step; a normal step takes milliseconds.
                StepTimeout = StepTimeout,
            }, logging => logging.SetMinimumLevel(LogLevel.Warning));
            using (var timeout = new CancellationTokenSource(PoolFixture.StartTimeout)) await _gateway.StartAsync(timeout.Token);
            _http = new HttpClient { BaseAddress = _gateway.BaseAddress, Timeout = RequestTimeout };
            await PoolFixture.WaitReadyAsync(_http, PoolFixture.StartTimeout, NodeOutput);
            // Both replicas must be in the view, or there is nothing to fail over to.
            var deadline = DateTime.UtcNow + PoolFixture.StartTimeout;
            while (true)
            {
                using var pool = JsonDocument.Parse(await _http.GetStringAsync("api/pool"));
                var healthy = 0;
                foreach (var node in pool.RootElement.GetProperty("nodes").EnumerateArray())
                    if (node.GetProperty("state").GetString() == "healthy") healthy++;
                _model = pool.RootElement.GetProperty("model").GetProperty("name").GetString() ?? "";
                if (healthy == 3) break;
                Assert.True(DateTime.UtcNow < deadline, $"only {healthy} healthy nodes in the pool view\n{NodeOutput()}");
                await Task.Delay(250);
            }
        }
        catch
        {
            // xUnit does not dispose a test class whose InitializeAsync failed: stop the node processes here.
            await DisposeAsync();
            throw;
        }
    }

    private string NodeOutput() => string.Join("\n", _nodes.Select(n => $"--- {n.NodeId}\n{n.Output}"));

    private StringContent Completion(bool stream) => new(JsonSerializer.Serialize(new
    {
        model = _model,
        prompt = "The replica takes over and",
        max_tokens = MaxTokens,
        temperature = 0,
        ignore_eos = true,
        stream,
    }), Encoding.UTF8, "application/json");

    [Fact]
    public async Task Killing_the_serving_node_mid_stream_fails_over_to_the_replica_with_identical_greedy_text()
    {
        using var baselineResponse = await _http.PostAsync("v1/completions", Completion(stream: false));
        var baselineBody = await baselineResponse.Content.ReadAsStringAsync();
        Assert.True(baselineResponse.IsSuccessStatusCode, baselineBody);
        using var baseline = JsonDocument.Parse(baselineBody);
        var expected = baseline.RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.Equal("length", baseline.RootElement.GetProperty("choices")[0].GetProperty("finish_reason").GetString());

        // Persistent channels, so looking at the replicas mid-stream costs one loopback round trip each.
        var channels = _nodes.ToDictionary(n => n.NodeId, n => n.Channel());
        try
        {
            await WaitIdleAsync(channels, except: null, "the baseline session");

            using var cts = new CancellationTokenSource(RequestTimeout);
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = Completion(stream: true) };
            var clock = Stopwatch.StartNew();
            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
            // Read the body only on failure: reading it here would consume the whole stream before the loop below.
            if (!response.IsSuccessStatusCode) Assert.Fail($"HTTP {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync(cts.Token)}");
            await using var body = await response.Content.ReadAsStreamAsync(cts.Token);
            var text = new StringBuilder();
            string? sessionId = null, finish = null, servingNode = null;
            NodeProcess? killed = null;
            int chunks = 0, servingOpenSessions = -1;
            long firstChunkMs = -1, killedAtMs = -1, lastChunkMs = 0, maxGapMs = 0, maxGapAtMs = 0;
            await foreach (var item in SseParser.Create(body).EnumerateAsync(cts.Token))
            {
                if (item.Data == "[DONE]") break;
                using var chunk = JsonDocument.Parse(item.Data);
                Assert.False(chunk.RootElement.TryGetProperty("error", out var error), $"the stream carried an error: {error}");
                sessionId ??= chunk.RootElement.GetProperty("id").GetString();
                var choice = chunk.RootElement.GetProperty("choices")[0];
                text.Append(choice.GetProperty("text").GetString());
                if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = choice.GetProperty("finish_reason").GetString();
                chunks++;
                var now = clock.ElapsedMilliseconds;
                if (firstChunkMs < 0) firstChunkMs = now;
                else if (now - lastChunkMs > maxGapMs) (maxGapMs, maxGapAtMs) = (now - lastChunkMs, now);
                lastChunkMs = now;
                if (servingNode is null)
                {
                    // The session grain records the route: the replica holding layers [2,4) for this session.
                    using var session = JsonDocument.Parse(await _http.GetStringAsync($"api/sessions/{sessionId}", cts.Token));
                    servingNode = session.RootElement.GetProperty("route").EnumerateArray()
                        .Single(h => h.GetProperty("start").GetInt32() == 2).GetProperty("node").GetString();
                }
                if (killed is null && chunks >= KillAfterChunks)
                {
                    // The stage really holds the session while the stream runs (Describe counts open KV sessions).
                    servingOpenSessions = (await DescribeAsync(channels[servingNode!])).OpenSessions;
                    killed = _nodes.Single(n => n.NodeId == servingNode);
                    killed.Kill();
                    killedAtMs = clock.ElapsedMilliseconds;
                }
            }
            var endedAtMs = clock.ElapsedMilliseconds;
            var timing = $"first chunk at {firstChunkMs} ms, killed {killed?.NodeId} at {killedAtMs} ms, stream ended at {endedAtMs} ms after {chunks} chunks, longest gap {maxGapMs} ms ending at {maxGapAtMs} ms";
            output.WriteLine(timing);
            Assert.True(killed is not null, $"the stream ended before the kill: {timing}");
            Assert.Equal(1, servingOpenSessions);
            Assert.True(finish == "length", $"finish_reason {finish}: {timing}");
            // Greedy text identical to the run without the fault: the replay rebuilt exactly the same KV.
            Assert.Equal(expected, text.ToString());

            // The generation really moved: a second route through the other replica, and the dead node is not on it.
            using var after = JsonDocument.Parse(await _http.GetStringAsync($"api/sessions/{sessionId}"));
            var snapshot = after.RootElement;
            Assert.True(snapshot.GetProperty("reroutes").GetInt32() >= 1, $"{timing}: {snapshot}");
            Assert.Equal("finished", snapshot.GetProperty("state").GetString());
            Assert.Equal(MaxTokens, snapshot.GetProperty("generated_tokens").GetArrayLength());
            var route = snapshot.GetProperty("route").EnumerateArray().Select(h => h.GetProperty("node").GetString()).ToList();
            Assert.DoesNotContain(killed.NodeId, route);
            Assert.Equal(new string?[] { "front", killed.NodeId == "back-a" ? "back-b" : "back-a" }, route);

            // Every surviving stage freed the session's KV (the old route's and the new one's).
            await WaitIdleAsync(channels, except: killed.NodeId, "the failed-over session");
        }
        finally
        {
            foreach (var channel in channels.Values) channel.Dispose();
        }
    }

    [Fact]
    public async Task A_node_leaving_with_SIGTERM_hands_its_stream_to_the_replica_with_identical_greedy_text()
    {
        var expected = await BaselineTextAsync();
        var run = await StreamWithFaultAsync(node => node.Terminate());
        var exitCode = await run.Faulted.WaitForExitAsync(TimeSpan.FromSeconds(60));
        output.WriteLine($"SIGTERM to {run.Faulted.NodeId} at {run.FaultAtMs} ms; stream ended at {run.EndedAtMs} ms; longest wait for text after it {run.StallMs} ms; exit code {exitCode}");
        Assert.Equal("length", run.Finish);
        // The drain (0.5 s) ended before the stream did: the session moved to the other replica and the text is unchanged.
        Assert.Equal(expected, run.Text);
        Assert.Equal(0, exitCode);
    }

    [Fact]
    public async Task A_frozen_node_times_out_a_step_and_the_stream_moves_to_the_replica_with_identical_greedy_text()
    {
        var expected = await BaselineTextAsync();
        var run = await StreamWithFaultAsync(node => node.Freeze());
        output.WriteLine($"SIGSTOP to {run.Faulted.NodeId} at {run.FaultAtMs} ms; stream ended at {run.EndedAtMs} ms; longest wait for text after it {run.StallMs} ms (step timeout {StepTimeout.TotalSeconds} s)");
        Assert.Equal("length", run.Finish);
        // Nothing broke a connection: the step timed out, the probe found the frozen stage, and the replica took over.
        Assert.True(run.StallMs >= StepTimeout.TotalMilliseconds * 0.9, $"the stream did not wait for the step timeout ({run.StallMs} ms)");
        Assert.Equal(expected, run.Text);
    }

    private async Task<string> BaselineTextAsync()
    {
        using var response = await _http.PostAsync("v1/completions", Completion(stream: false));
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, body);
        using var json = JsonDocument.Parse(body);
        return json.RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;
    }

    private sealed record FaultedStream(NodeProcess Faulted, string Text, string? Finish, long FaultAtMs, long EndedAtMs, long StallMs);

    /// <summary>
    /// Streams the completion and applies <paramref name="fault"/> to the replica serving [2,4) after
    /// <see cref="KillAfterChunks"/> chunks; the stall is the longest wait for text from the fault on.
    /// </summary>
    private async Task<FaultedStream> StreamWithFaultAsync(Action<NodeProcess> fault)
    {
        using var cts = new CancellationTokenSource(RequestTimeout);
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = Completion(stream: true) };
        var clock = Stopwatch.StartNew();
        using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
        // Read the body only on failure: reading it for the message would consume the whole stream first.
        if (!response.IsSuccessStatusCode) Assert.Fail($"HTTP {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync(cts.Token)}");
        var route = response.Headers.GetValues("x-potluck-route").Single();
        var serving = _nodes.Single(n => route.Contains($"{n.NodeId}:2-4", StringComparison.Ordinal));
        await using var body = await response.Content.ReadAsStreamAsync(cts.Token);
        var text = new StringBuilder();
        string? finish = null;
        int chunks = 0;
        long faultAt = -1, lastChunk = 0, stall = 0;
        await foreach (var item in SseParser.Create(body).EnumerateAsync(cts.Token))
        {
            if (item.Data == "[DONE]") break;
            using var chunk = JsonDocument.Parse(item.Data);
            Assert.False(chunk.RootElement.TryGetProperty("error", out var error), $"the stream carried an error: {error}");
            var choice = chunk.RootElement.GetProperty("choices")[0];
            text.Append(choice.GetProperty("text").GetString());
            if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = choice.GetProperty("finish_reason").GetString();
            var now = clock.ElapsedMilliseconds;
            if (faultAt >= 0) stall = Math.Max(stall, now - Math.Max(lastChunk, faultAt));
            lastChunk = now;
            if (++chunks == KillAfterChunks)
            {
                fault(serving);
                faultAt = clock.ElapsedMilliseconds;
            }
        }
        Assert.True(faultAt >= 0, $"the stream ended after {chunks} chunks, before the fault");
        return new FaultedStream(serving, text.ToString(), finish, faultAt, lastChunk, stall);
    }

    private static async Task<StageDescription> DescribeAsync(GrpcChannel channel) =>
        await new Stage.StageClient(channel).DescribeAsync(new DescribeRequest(), deadline: DateTime.UtcNow.AddSeconds(10));

    /// <summary>Waits until every node (but <paramref name="except"/>) holds no session and all its KV is free.</summary>
    private static async Task WaitIdleAsync(Dictionary<string, GrpcChannel> channels, string? except, string what)
    {
        var deadline = DateTime.UtcNow + SettleTimeout;
        foreach (var (nodeId, channel) in channels)
        {
            if (nodeId == except) continue;
            StageDescription description;
            while ((description = await DescribeAsync(channel)).OpenSessions != 0 || description.FreeKvTokens != description.KvBudgetTokens)
            {
                Assert.True(DateTime.UtcNow < deadline,
                    $"{nodeId} still holds {description.OpenSessions} sessions ({description.FreeKvTokens}/{description.KvBudgetTokens} KV tokens free) after {what}");
                await Task.Delay(50);
            }
        }
    }

    public async Task DisposeAsync()
    {
        _http?.Dispose();
        if (_gateway is not null) await _gateway.DisposeAsync();
        foreach (var node in _nodes) await node.DisposeAsync();
    }
}

/// <summary>
/// Runs alone, after the parallel collections: its three extra node processes would otherwise slow the shared
/// pool's timing-sensitive tests (e.g. client disconnect mid-stream), and its measured stall stays clean.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class FailoverCollection
{
    public const string Name = "failover";
}
