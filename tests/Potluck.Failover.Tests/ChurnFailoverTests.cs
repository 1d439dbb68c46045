using System.Diagnostics;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Potluck.Gateway;
using Potluck.Protocol.V1;
using Potluck.Inference.Models;
using Xunit.Abstractions;

namespace Potluck.Failover.Tests;

/// <summary>
/// Nodes dying under load: the demo model's three spans each held by two node processes; 20 streamed requests, and
/// during each one a node serving it is SIGKILLed (first, middle and last stage in turn). Every stream must finish
/// without an error and with the text of a run without the fault; the stall each kill caused is printed. After each
/// kill a fresh node takes the dead one's span, so every span has two holders again before the next request.
/// The gateway is the primary silo: it outlives every node.
/// Its own test project, so it runs in a fresh test process: after the rest of the gateway suite in one process its
/// stall p95 was 3.2-3.9 s (three runs), alone 0.73-0.88 s (two runs), against the 2 s target.
/// </summary>
[ProcessTest]
public sealed class ChurnFailoverTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int Requests = 20;
    private const int MaxTokens = 48;
    private const int KillAfterChunks = 12;
    private static readonly (int Start, int End)[] Spans = [(0, 3), (3, 6), (6, 8)];
    private static readonly string[] Prompts =
    [
        "Nodes come and go, and the stream",
        "A community pool keeps serving when",
        "The replica rebuilds its cache from",
        "Every span is held twice so that",
    ];
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan PoolTimeout = TimeSpan.FromSeconds(90);
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);

    private readonly string _modelPath = TestModels.Get(TestModelSpec.Demo, TestModelSpec.DemoWeightType);
    private readonly List<NodeProcess> _nodes = [];
    private readonly List<NodeProcess> _dead = [];
    private GatewayApp _gateway = null!;
    private HttpClient _http = null!;
    private string _seed = "";
    private string _model = "";

    public async Task InitializeAsync()
    {
        var gatewaySilo = Ports.Free();
        _seed = $"127.0.0.1:{gatewaySilo}";
        _gateway = GatewayHost.Build(new GatewayOptions
        {
            Security = TestPki.Settings(),
            ModelPath = _modelPath,
            Port = 0,
            SiloPort = gatewaySilo,
            WireType = HiddenType.F16,
            Threads = 1,
            PoolRefreshPeriod = TimeSpan.FromMilliseconds(500),
            GatewayId = "gateway-churn",
            StepTimeout = TimeSpan.FromSeconds(20),
            FastFailureDetection = true,
        }, logging => logging.SetMinimumLevel(LogLevel.Warning));
        try
        {
            using (var timeout = new CancellationTokenSource(StartTimeout)) await _gateway.StartAsync(timeout.Token);
            _http = new HttpClient { BaseAddress = _gateway.BaseAddress, Timeout = RequestTimeout };
            foreach (var (start, end) in Spans)
                foreach (var replica in new[] { "a", "b" })
                    _nodes.Add(StartNode(start, end, $"s{start}-{replica}"));
            await WaitForPoolAsync();
            using var pool = JsonDocument.Parse(await _http.GetStringAsync("api/pool"));
            _model = pool.RootElement.GetProperty("model").GetProperty("name").GetString() ?? "";
        }
        catch
        {
            // xUnit does not dispose a test class whose InitializeAsync failed: stop the node processes here.
            await DisposeAsync();
            throw;
        }
    }

    private readonly Dictionary<string, (int Start, int End)> _spanOf = new(StringComparer.Ordinal);

    private NodeProcess StartNode(int start, int end, string nodeId)
    {
        _spanOf[nodeId] = (start, end);
        return NodeProcess.Start(_modelPath, start, end, nodeId, _seed, fastFailureDetection: true);
    }

    /// <summary>
    /// Ports.Free() hands out a port that was free a moment ago; with this many processes starting, another socket can
    /// take it first. A node that lost that race is started again on fresh ports (at most twice).
    /// </summary>
    private async Task RestartPortLosersAsync()
    {
        for (var i = 0; i < _nodes.Count; i++)
        {
            var node = _nodes[i];
            if (!node.HasExited || !node.Output.Contains("address already in use", StringComparison.Ordinal)) continue;
            Assert.True(++_portRetries <= 2, $"{node.NodeId} lost its port again\n{node.Output}");
            output.WriteLine($"{node.NodeId} lost its port to another socket; starting it again");
            await node.DisposeAsync();
            var (start, end) = _spanOf[node.NodeId];
            _nodes[i] = StartNode(start, end, node.NodeId);
        }
    }

    private int _portRetries;

    /// <summary>Waits until the pool view lists exactly the live nodes as healthy and no dead one as healthy.</summary>
    private async Task WaitForPoolAsync()
    {
        var deadline = DateTime.UtcNow + PoolTimeout;
        while (true)
        {
            using var pool = JsonDocument.Parse(await _http.GetStringAsync("api/pool"));
            var healthy = new HashSet<string>(StringComparer.Ordinal);
            foreach (var node in pool.RootElement.GetProperty("nodes").EnumerateArray())
                if (node.GetProperty("state").GetString() == "healthy") healthy.Add(node.GetProperty("id").GetString()!);
            await RestartPortLosersAsync();
            var live = _nodes.Select(n => n.NodeId).ToHashSet(StringComparer.Ordinal);
            if (live.IsSubsetOf(healthy) && !_dead.Any(d => healthy.Contains(d.NodeId))) return;
            Assert.True(DateTime.UtcNow < deadline,
                $"pool view healthy [{string.Join(", ", healthy)}], expected [{string.Join(", ", live)}]\n{NodeOutput()}");
            await Task.Delay(200);
        }
    }

    private string NodeOutput() => string.Join("\n", _nodes.Concat(_dead).Select(n => $"--- {n.NodeId}\n{n.Output}"));

    private StringContent Completion(string prompt, bool stream) => new(JsonSerializer.Serialize(new
    {
        model = _model,
        prompt,
        max_tokens = MaxTokens,
        temperature = 0,
        ignore_eos = true,
        stream,
    }), Encoding.UTF8, "application/json");

    [Fact]
    public async Task Concurrent_streams_spread_over_the_replicas_of_every_span()
    {
        const int streams = 6;
        var requests = new List<(HttpRequestMessage Request, HttpResponseMessage Response)>();
        try
        {
            // The planner weighs each replica's estimated time (measured step time plus hop, at least 1 ms) against its
            // load. Hops measured on a loaded 2-core machine swing 2-8 ms between refreshes, so a span is judged only when
            // its replicas are estimated within 2x of each other both just before the streams open and after.
            var before = await ComparableSpansAsync(TimeSpan.FromSeconds(30));
            // Open them together: the nodes' reported load lags, so only the gateway's own count can spread them.
            var started = Enumerable.Range(0, streams).Select(async i =>
            {
                var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = Completion(Prompts[i % Prompts.Length], stream: true) };
                var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
                return (request, response);
            }).ToArray();
            requests.AddRange(await Task.WhenAll(started));
            var perSpan = new Dictionary<string, Dictionary<string, int>>(StringComparer.Ordinal);
            foreach (var (_, response) in requests)
            {
                Assert.True(response.IsSuccessStatusCode, $"HTTP {(int)response.StatusCode}");
                foreach (var hop in response.Headers.GetValues("x-potluck-route").Single().Split(' '))
                {
                    var colon = hop.LastIndexOf(':');
                    var counts = perSpan.TryGetValue(hop[(colon + 1)..], out var c) ? c : perSpan[hop[(colon + 1)..]] = new(StringComparer.Ordinal);
                    counts[hop[..colon]] = counts.GetValueOrDefault(hop[..colon]) + 1;
                }
            }
            var summary = string.Join("; ", perSpan.Select(s => $"{s.Key}: " + string.Join(", ", s.Value.Select(n => $"{n.Key}×{n.Value}"))));
            output.WriteLine($"{streams} concurrent streams: {summary}");
            var after = ComparableSpans(await EstimatesAsync());
            var compared = 0;
            foreach (var (start, end) in Spans)
            {
                if (!before.Contains(start) || !after.Contains(start)) continue;
                compared++;
                Assert.True(perSpan.TryGetValue($"{start}-{end}", out var holders) && holders.Count == 2, $"span {start}-{end} not spread over both replicas: {summary}");
            }
            Assert.True(compared > 0, $"no span had replicas with comparable estimates both before and after: {summary}");
        }
        finally
        {
            foreach (var (request, response) in requests)
            {
                response.Dispose();
                request.Dispose();
            }
        }
    }

    /// <summary>Each node's estimated time per token as the planner sees it: measured step time plus hop (at least 1 ms).</summary>
    private async Task<Dictionary<string, double>> EstimatesAsync()
    {
        var estimate = new Dictionary<string, double>(StringComparer.Ordinal);
        using var pool = JsonDocument.Parse(await _http.GetStringAsync("api/pool"));
        foreach (var node in pool.RootElement.GetProperty("nodes").EnumerateArray())
        {
            var hop = node.GetProperty("hop_latency_ms") is { ValueKind: JsonValueKind.Number } h ? h.GetDouble() : 1.0;
            estimate[node.GetProperty("id").GetString()!] = node.GetProperty("ms_per_token").GetDouble() + Math.Max(1.0, hop);
            output.WriteLine($"  {node.GetProperty("id").GetString()}: {node.GetProperty("ms_per_token")} ms/token, hop {node.GetProperty("hop_latency_ms")} ms");
        }
        return estimate;
    }

    /// <summary>Start layers of the spans whose two replicas are estimated within 2x of each other.</summary>
    private static HashSet<int> ComparableSpans(Dictionary<string, double> estimate)
    {
        var comparable = new HashSet<int>();
        foreach (var (start, _) in Spans)
        {
            if (!estimate.TryGetValue($"s{start}-a", out var a) || !estimate.TryGetValue($"s{start}-b", out var b)) continue;
            if (Math.Max(a, b) <= 2 * Math.Min(a, b)) comparable.Add(start);
        }
        return comparable;
    }

    /// <summary>Polls the pool view (bounded) until some span's replicas are comparable; the last view's set otherwise.</summary>
    private async Task<HashSet<int>> ComparableSpansAsync(TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        while (true)
        {
            var comparable = ComparableSpans(await EstimatesAsync());
            if (comparable.Count > 0 || DateTime.UtcNow > deadline) return comparable;
            await Task.Delay(500);
        }
    }

    [Fact]
    public async Task Twenty_streams_each_survive_the_SIGKILL_of_a_node_serving_them_with_identical_text()
    {
        var expected = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var prompt in Prompts)
        {
            using var baseline = await _http.PostAsync("v1/completions", Completion(prompt, stream: false));
            var body = await baseline.Content.ReadAsStringAsync();
            Assert.True(baseline.IsSuccessStatusCode, body);
            using var json = JsonDocument.Parse(body);
            expected[prompt] = json.RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;
        }

        var stalls = new List<long>();
        var replacements = 0;
        var lateKills = 0;
        var extraMoves = 0;
        for (var i = 0; i < Requests; i++)
        {
            var prompt = Prompts[i % Prompts.Length];
            var victimHop = i % Spans.Length;
            using var cts = new CancellationTokenSource(RequestTimeout);
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = Completion(prompt, stream: true) };
            var clock = Stopwatch.StartNew();
            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
            if (!response.IsSuccessStatusCode) Assert.Fail($"request {i}: HTTP {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync(cts.Token)}");
            // "nodeId:start-end" per hop: the route this stream runs on.
            var route = response.Headers.GetValues("x-potluck-route").Single().Split(' ');
            Assert.Equal(Spans.Length, route.Length);
            var victimId = route[victimHop][..route[victimHop].LastIndexOf(':')];
            var victim = _nodes.Single(n => n.NodeId == victimId);
            var sessionId = response.Headers.GetValues("x-potluck-session").Single();

            await using var body = await response.Content.ReadAsStreamAsync(cts.Token);
            var text = new StringBuilder();
            string? finish = null;
            int chunks = 0;
            long killedAt = -1, lastChunk = 0, stall = -1;
            var endedBeforeKill = false;
            await foreach (var item in SseParser.Create(body).EnumerateAsync(cts.Token))
            {
                if (item.Data == "[DONE]") break;
                using var chunk = JsonDocument.Parse(item.Data);
                Assert.False(chunk.RootElement.TryGetProperty("error", out var error), $"request {i}: the stream carried an error: {error}\n{NodeOutput()}");
                var choice = chunk.RootElement.GetProperty("choices")[0];
                text.Append(choice.GetProperty("text").GetString());
                if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = choice.GetProperty("finish_reason").GetString();
                chunks++;
                var now = clock.ElapsedMilliseconds;
                // The stall: the longest wait for text from the kill on (chunks already in flight may arrive first).
                if (killedAt >= 0) stall = Math.Max(stall, now - Math.Max(lastChunk, killedAt));
                lastChunk = now;
                if (killedAt < 0 && chunks >= KillAfterChunks)
                {
                    victim.Kill();
                    killedAt = clock.ElapsedMilliseconds;
                    // The client reads behind the gateway: on a busy machine the generation may already have ended.
                    using var state = JsonDocument.Parse(await _http.GetStringAsync($"api/sessions/{sessionId}"));
                    endedBeforeKill = state.RootElement.GetProperty("state").GetString() == "finished";
                }
            }
            Assert.True(killedAt >= 0, $"request {i}: the stream ended after {chunks} chunks, before the kill");
            Assert.True(finish == "length", $"request {i}: finish_reason {finish}");
            Assert.True(expected[prompt] == text.ToString(),
                $"request {i} (killed {victimId}, hop {victimHop}): text differs from the run without the fault\nexpected: {expected[prompt]}\nactual:   {text}");
            stalls.Add(stall);

            if (endedBeforeKill)
            {
                output.WriteLine($"request {i,2}: the generation had ended before the kill landed; no failover to check");
                lateKills++;
            }
            // Only the dead stage was replaced: the other stages kept the session (and its KV) across the failover.
            else using (var session = JsonDocument.Parse(await _http.GetStringAsync($"api/sessions/{sessionId}")))
            {
                var after = session.RootElement.GetProperty("route").EnumerateArray()
                    .Select(h => $"{h.GetProperty("node").GetString()}:{h.GetProperty("start").GetInt32()}-{h.GetProperty("end").GetInt32()}").ToArray();
                Assert.True(session.RootElement.GetProperty("reroutes").GetInt32() >= 1, $"request {i}: no reroute recorded: {session.RootElement}");
                for (var hop = 0; hop < Spans.Length; hop++)
                {
                    if (hop == victimHop) Assert.NotEqual(route[hop], after[hop]);
                    else if (route[hop] != after[hop])
                    {
                        // A healthy stage that missed a step deadline on a loaded machine is re-planned too; rare, bounded below.
                        output.WriteLine($"request {i}: hop {hop} moved from {route[hop]} to {after[hop]} although only hop {victimHop} died");
                        extraMoves++;
                    }
                }
            }
            output.WriteLine($"request {i,2}: killed {victimId} (hop {victimHop}) after {KillAfterChunks} chunks; stall {stall} ms; stream took {lastChunk} ms");

            // A fresh node takes the dead one's span, so the next request again finds every span held twice.
            _nodes.Remove(victim);
            _dead.Add(victim);
            var (start, end) = Spans[victimHop];
            _nodes.Add(StartNode(start, end, $"s{start}-r{++replacements}"));
            await WaitForPoolAsync();
        }

        var sorted = stalls.Order().ToArray();
        var p95 = sorted[(int)Math.Ceiling(0.95 * sorted.Length) - 1];
        output.WriteLine($"stall after SIGKILL over {sorted.Length} kills: median {sorted[sorted.Length / 2]} ms, p95 {p95} ms, max {sorted[^1]} ms");
        Assert.True(p95 < 2000, $"p95 stall {p95} ms (target under 2 s): {string.Join(", ", stalls)}");
        // Most kills must land mid-generation, or this test checks nothing.
        Assert.True(extraMoves <= Requests / 10, $"{extraMoves} of {Requests} failovers also moved a stage that did not die");
        Assert.True(lateKills <= Requests / 4, $"{lateKills} of {Requests} kills landed after the generation had ended");

        // Nothing leaks: every live node frees every session once the streams are done.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        foreach (var node in _nodes)
        {
            StageDescription description;
            while ((description = await node.DescribeAsync()).OpenSessions != 0 || description.FreeKvTokens != description.KvBudgetTokens)
            {
                Assert.True(DateTime.UtcNow < deadline, $"{node.NodeId} still holds {description.OpenSessions} sessions after the run");
                await Task.Delay(100);
            }
        }
    }

    public async Task DisposeAsync()
    {
        _http?.Dispose();
        if (_gateway is not null) await _gateway.DisposeAsync();
        foreach (var node in _nodes.Concat(_dead)) await node.DisposeAsync();
    }
}
