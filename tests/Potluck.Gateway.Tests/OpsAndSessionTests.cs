using System.Net;
using System.Text;
using System.Text.Json;

namespace Potluck.Gateway.Tests;

[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class OpsAndSessionTests(PoolFixture pool)
{
    private StringContent Chat(string content, int maxTokens, bool stream = false, string extra = "") => new(
        $$"""{"model":{{JsonSerializer.Serialize(pool.ModelName)}},"messages":[{"role":"user","content":{{JsonSerializer.Serialize(content)}}}],"max_tokens":{{maxTokens}},"stream":{{(stream ? "true" : "false")}}{{extra}}}""",
        Encoding.UTF8, "application/json");

    [Fact]
    public async Task PoolEndpointShowsEveryNodeAndFullCoverage()
    {
        using var json = JsonDocument.Parse(await pool.Http.GetStringAsync("api/pool"));
        var root = json.RootElement;
        Assert.Equal(4, root.GetProperty("model").GetProperty("layers").GetInt32());
        var nodes = root.GetProperty("nodes").EnumerateArray().ToList();
        Assert.Equal(["node-0", "node-1", "node-2"], nodes.Select(n => n.GetProperty("id").GetString()).Order());
        foreach (var node in nodes)
        {
            Assert.Equal("healthy", node.GetProperty("state").GetString());
            Assert.StartsWith("https://127.0.0.1:", node.GetProperty("endpoint").GetString());
            Assert.True(node.GetProperty("free_kv_tokens").GetInt64() > 0);
            Assert.True(node.GetProperty("ms_per_token").GetDouble() > 0);
            // Nodes advertise their OS process id in silo metadata; each node is its own process.
            Assert.Contains(node.GetProperty("process_id").GetInt32(), pool.Nodes.Select(n => n.ProcessId));
            Assert.True(node.TryGetProperty("open_sessions", out _));
        }
        var coverage = root.GetProperty("coverage");
        Assert.True(coverage.GetProperty("full_chain").GetBoolean());
        Assert.Equal(0, coverage.GetProperty("gaps").GetArrayLength());

        Assert.Equal(HttpStatusCode.OK, (await pool.Http.GetAsync("healthz")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await pool.Http.GetAsync("readyz")).StatusCode);
        var page = await pool.Http.GetStringAsync("");
        Assert.Contains("/api/pool", page);
        using var models = JsonDocument.Parse(await pool.Http.GetStringAsync("v1/models"));
        Assert.Equal(pool.ModelName, models.RootElement.GetProperty("data")[0].GetProperty("id").GetString());
    }

    [Fact]
    public async Task MetricsCountRequestsTokensAndLatencies()
    {
        using var response = await pool.Http.PostAsync("v1/chat/completions", Chat("metrics please", 4));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var metrics = await pool.Http.GetStringAsync("metrics");
        foreach (var name in new[] { "potluck_gateway_requests", "potluck_gateway_completion_tokens", "potluck_gateway_time_to_first_token",
                     "potluck_gateway_inter_token_latency", "potluck_gateway_step_round_trip", "potluck_gateway_hop_latency", "potluck_gateway_active_sessions" })
            Assert.Contains(name, metrics);
    }

    [Fact]
    public async Task StopSequenceCutsTheTextAndRewindsTheKv()
    {
        // Find what greedy decoding says, then stop on a piece from its middle.
        var freeText = await (await pool.Http.PostAsync("v1/chat/completions", Chat("stop test", 24, extra: ",\"temperature\":0"))).Content.ReadAsStringAsync();
        using var free = JsonDocument.Parse(freeText);
        Assert.True(free.RootElement.TryGetProperty("choices", out _), freeText);
        var full = free.RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        Assert.True(full.Length >= 8, $"greedy text too short: '{full}'");
        var stop = full.Substring(full.Length / 2, 2);
        var expected = full[..full.IndexOf(stop, StringComparison.Ordinal)];

        var stoppedText = await (await pool.Http.PostAsync("v1/chat/completions",
            Chat("stop test", 24, extra: $",\"temperature\":0,\"stop\":[{JsonSerializer.Serialize(stop)},\"zzzzzz\"]"))).Content.ReadAsStringAsync();
        using var stopped = JsonDocument.Parse(stoppedText);
        Assert.True(stopped.RootElement.TryGetProperty("choices", out _), stoppedText);
        var choice = stopped.RootElement.GetProperty("choices")[0];
        Assert.Equal(expected, choice.GetProperty("message").GetProperty("content").GetString());
        Assert.Equal("stop", choice.GetProperty("finish_reason").GetString());

        using var session = JsonDocument.Parse(await pool.Http.GetStringAsync($"api/sessions/{stopped.RootElement.GetProperty("id").GetString()}"));
        var prompt = stopped.RootElement.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        var generated = session.RootElement.GetProperty("generated_tokens").GetArrayLength();
        var kv = session.RootElement.GetProperty("kv_length").GetInt32();
        Assert.True(kv >= prompt && kv < prompt + generated, $"KV length {kv} not rewound below {prompt + generated}");
    }

    [Fact]
    public async Task ClientDisconnectStopsGenerationAndFreesKvOnEveryStage()
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = Chat("a long answer please", 400, stream: true, extra: ",\"ignore_eos\":true") };
        string sessionId;
        // A client that really goes away: by default SocketsHttpHandler drains an abandoned response (up to 1 MB or
        // 2 s) to reuse the connection, which would keep reading the stream to its natural end.
        using var client = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = pool.Http.BaseAddress };
        using (var cancel = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            await using var stream = await response.Content.ReadAsStreamAsync(cancel.Token);
            var buffer = new byte[512];
            var read = await stream.ReadAsync(buffer, cancel.Token);
            var match = System.Text.RegularExpressions.Regex.Match(Encoding.UTF8.GetString(buffer, 0, read), "\"id\":\"(chatcmpl-[0-9a-f]+)\"");
            Assert.True(match.Success, "no id in the first chunk");
            sessionId = match.Groups[1].Value;
            var open = 0;
            foreach (var node in pool.Nodes) open += (await node.DescribeAsync()).OpenSessions;
            Assert.True(open >= 3, $"expected the session open on all 3 stages, saw {open}");
            cancel.Cancel(); // the client goes away mid-stream
        }
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            var open = 0;
            foreach (var node in pool.Nodes) open += (await node.DescribeAsync()).OpenSessions;
            if (open == 0) break;
            Assert.True(DateTime.UtcNow < deadline, $"{open} stage sessions still open 10 s after the client left");
            await Task.Delay(100);
        }
        // The session grain saw the cancel, and generation stopped well short of 400 tokens.
        for (var i = 0; ; i++)
        {
            using var session = JsonDocument.Parse(await pool.Http.GetStringAsync($"api/sessions/{sessionId}"));
            if (session.RootElement.GetProperty("state").GetString() == "cancelled")
            {
                Assert.True(session.RootElement.GetProperty("generated_tokens").GetArrayLength() < 400);
                break;
            }
            Assert.True(i < 50, $"session state is {session.RootElement.GetProperty("state").GetString()}, not cancelled");
            await Task.Delay(100);
        }
    }
}
