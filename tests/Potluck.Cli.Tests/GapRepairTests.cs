using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Xunit.Abstractions;

namespace Potluck.Cli.Tests;

/// <summary>
/// The only holder of a span dies mid-stream: there is nothing to fail over to, so the stream must end with a clear
/// error event (not hang, not a broken connection), the gateway stays up, the surviving stages free the session's KV,
/// /readyz names the gap, and a node started with --join and no --layers takes exactly the missing span, after which
/// the pool serves the same text as before. Real `potluck gateway` and `potluck node` processes on loopback.
/// </summary>
[ProcessTest]
public sealed class GapRepairTests(JoinModels models, ITestOutputHelper output) : IClassFixture<JoinModels>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(90);
    private const string Prompt = "The only node holding the middle layers";

    [Fact]
    public async Task When_the_only_holder_of_a_span_dies_the_stream_ends_with_an_error_and_a_joining_node_fills_exactly_that_gap()
    {
        var home = models.Home.Path;
        await using var gateway = GatewayProcess.Start(home, models.Pool);
        var url = gateway.Url;
        var seed = gateway.Seed;
        using var http = gateway.CreateClient(TimeSpan.FromSeconds(60));
        await JoinTests.WaitUntilAsync(http, "healthz", _ => true, Limit, gateway);

        ChildProcess Node(string layers, string id) => PotluckProcess.Start(home, "node", "--model", models.Pool, "--layers", layers, "--join", seed, "--node-id", id,
            "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(), "--threads", "1");
        await using var front = Node("0:3", "front");
        await using var middle = Node("3:6", "middle");
        await using var back = Node("6:8", "back");
        await JoinTests.WaitUntilAsync(http, "readyz", _ => true, Limit, gateway);
        var modelName = await ModelNameAsync(http);

        using var baselineResponse = await http.PostAsync("v1/completions", Completion(modelName, stream: false, maxTokens: 24));
        var baselineBody = await baselineResponse.Content.ReadAsStringAsync();
        Assert.True(baselineResponse.IsSuccessStatusCode, baselineBody);
        var baseline = TextOf(baselineBody);

        // Stream, and SIGKILL the middle stage once text flows.
        var clock = Stopwatch.StartNew();
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = Completion(modelName, stream: true, maxTokens: 2000) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        // Read the body only on failure: reading it for the message would consume the whole stream first.
        if (!response.IsSuccessStatusCode) Assert.Fail($"HTTP {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        Assert.Contains("middle:3-6", response.Headers.GetValues("x-potluck-route").Single());
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        int chunks = 0, chunksAtKill = 0;
        long killedAt = -1;
        string? errorEvent = null;
        var done = false;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            var data = line["data: ".Length..];
            if (data == "[DONE]")
            {
                done = true;
                break;
            }
            using var chunk = JsonDocument.Parse(data);
            if (chunk.RootElement.TryGetProperty("error", out var error))
            {
                errorEvent = error.GetRawText();
                continue;
            }
            if (++chunks == 10)
            {
                middle.Signal(ProcessSignal.Kill);
                killedAt = clock.ElapsedMilliseconds;
                chunksAtKill = chunks;
            }
        }
        var endedAt = clock.ElapsedMilliseconds;
        output.WriteLine($"killed the middle stage at {killedAt} ms after {chunksAtKill} chunks; stream ended at {endedAt} ms after {chunks} chunks; error event: {errorEvent}");
        Assert.True(killedAt >= 0, $"the stream ended after {chunks} chunks, before the kill");
        Assert.False(done, "the stream finished normally although the only holder of layers [3, 6) died");
        Assert.True(errorEvent is not null, $"the stream ended without an error event\n--- gateway\n{gateway.Output}");
        using (var error = JsonDocument.Parse(errorEvent!))
        {
            Assert.Equal("server_error", error.RootElement.GetProperty("type").GetString());
            var message = error.RootElement.GetProperty("message").GetString()!;
            Assert.Contains("[3, 6)", message);
            Assert.Contains("--layers 3:6", message);
        }

        // The gateway is still up, says what is missing, and the survivors freed the session.
        Assert.True((await http.GetAsync("healthz")).IsSuccessStatusCode);
        var notReady = await WaitForAsync(http, "readyz", 503, body => body.Contains("\"missing_layers\":[{\"start\":3,\"end\":6,\"layers\":\"[3, 6)\",\"hint\":\"--layers 3:6\"}]", StringComparison.Ordinal), gateway);
        output.WriteLine($"/readyz: {notReady}");
        await JoinTests.WaitUntilAsync(http, "api/pool", body => SurvivorsIdle(body), Limit, gateway);

        // A node that joins by URL without --layers takes exactly the gap.
        await using var filler = PotluckProcess.Start(home, "node", "--model", models.Pool, "--join", url, "--node-id", "filler",
            "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(), "--threads", "1");
        var ready = await JoinTests.WaitUntilAsync(http, "readyz", _ => true, Limit, filler);
        output.WriteLine($"/readyz after the join: {ready}");
        using (var pool = JsonDocument.Parse(await http.GetStringAsync("api/pool")))
        {
            var span = pool.RootElement.GetProperty("nodes").EnumerateArray().Single(n => n.GetProperty("id").GetString() == "filler").GetProperty("span");
            var chosen = (span.GetProperty("start").GetInt32(), span.GetProperty("end").GetInt32());
            Assert.True(chosen == (3, 6), $"the joining node took {chosen}, not the gap [3, 6)\n--- filler\n{filler.Output}\n--- gateway\n{gateway.Output}");
        }

        // And the repaired pool gives the same text as before the failure.
        using var afterResponse = await http.PostAsync("v1/completions", Completion(modelName, stream: false, maxTokens: 24));
        var afterBody = await afterResponse.Content.ReadAsStringAsync();
        Assert.True(afterResponse.IsSuccessStatusCode, afterBody);
        Assert.Equal(baseline, TextOf(afterBody));
    }

    private static bool SurvivorsIdle(string poolJson)
    {
        using var pool = JsonDocument.Parse(poolJson);
        foreach (var node in pool.RootElement.GetProperty("nodes").EnumerateArray())
        {
            var id = node.GetProperty("id").GetString();
            if (id is not ("front" or "back")) continue;
            if (node.GetProperty("open_sessions").GetInt32() != 0) return false;
            if (node.GetProperty("free_kv_tokens").GetInt64() != node.GetProperty("kv_budget_tokens").GetInt64()) return false;
        }
        return true;
    }

    /// <summary>Polls until <paramref name="path"/> answers <paramref name="status"/> with a body <paramref name="accept"/> takes.</summary>
    private static async Task<string> WaitForAsync(HttpClient http, string path, int status, Func<string, bool> accept, ChildProcess watched)
    {
        var clock = Stopwatch.StartNew();
        var last = "";
        while (clock.Elapsed < Limit)
        {
            if (watched.HasExited) throw new InvalidOperationException($"{watched.Name} exited ({watched.ExitCode})\n{watched.Output}");
            using var response = await http.GetAsync(path);
            last = $"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}";
            if ((int)response.StatusCode == status && accept(last)) return last;
            await Task.Delay(250);
        }
        throw new TimeoutException($"/{path} never answered {status} as expected; last: {last}");
    }

    private static async Task<string> ModelNameAsync(HttpClient http)
    {
        using var models = JsonDocument.Parse(await http.GetStringAsync("v1/models"));
        return models.RootElement.GetProperty("data")[0].GetProperty("id").GetString()!;
    }

    private static StringContent Completion(string model, bool stream, int maxTokens) => new(JsonSerializer.Serialize(new
    {
        model,
        prompt = Prompt,
        max_tokens = maxTokens,
        temperature = 0,
        ignore_eos = true,
        stream,
    }), Encoding.UTF8, "application/json");

    private static string TextOf(string body)
    {
        using var json = JsonDocument.Parse(body);
        return json.RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;
    }
}
