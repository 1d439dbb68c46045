using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Potluck.Gateway.Admission;
using Potluck.Gateway.Streaming;
using Potluck.Protocol.V1;
using Xunit.Abstractions;

namespace Potluck.Gateway.Tests;

/// <summary>
/// Admission through a real gateway and pool: with one slot and a queue of one, a third request is told the pool is at
/// capacity (429, Retry-After) while the waiting one completes, and a streaming waiter is kept alive with SSE comments.
/// </summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class AdmissionGatewayTests(PoolFixture pool, ITestOutputHelper output)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private StringContent Chat(string content, int maxTokens, bool stream = false, string extra = "") => new(
        $$"""{"model":{{JsonSerializer.Serialize(pool.ModelName)}},"messages":[{"role":"user","content":{{JsonSerializer.Serialize(content)}}}],"max_tokens":{{maxTokens}},"stream":{{(stream ? "true" : "false")}}{{extra}}}""",
        Encoding.UTF8, "application/json");

    private StringContent Messages(string content, int maxTokens, bool stream) => new(
        $$"""{"model":{{JsonSerializer.Serialize(pool.ModelName)}},"max_tokens":{{maxTokens}},"stream":{{(stream ? "true" : "false")}},"messages":[{"role":"user","content":{{JsonSerializer.Serialize(content)}}}]}""",
        Encoding.UTF8, "application/json");

    private async Task<(GatewayApp Gateway, HttpClient Http, AdmissionQueue Admission)> StartAsync(Func<GatewayOptions, GatewayOptions> configure)
    {
        var gateway = await pool.StartGatewayAsync(pool.Seed, HiddenType.F32,
            o => configure(o with { MaxConcurrentSessions = 1, MaxQueuedRequests = 1 }));
        // A client that really goes away when a stream is cancelled (no draining of the abandoned response).
        var http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = gateway.BaseAddress, Timeout = Patience };
        await PoolFixture.WaitReadyAsync(http, PoolFixture.StartTimeout);
        return (gateway, http, gateway.Services.GetRequiredService<GenerationService>().Admission);
    }

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            await Task.Delay(5);
        }
    }

    /// <summary>Starts a long streamed generation (nearly the whole context) and reads its first chunk, so it holds the one slot.</summary>
    private async Task<(HttpResponseMessage Response, Stream Body)> StartLongStreamAsync(HttpClient http, CancellationToken ct)
    {
        var payload = $$"""{"model":{{JsonSerializer.Serialize(pool.ModelName)}},"prompt":"Once","max_tokens":500,"ignore_eos":true,"stream":true}""";
        var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(payload, Encoding.UTF8, "application/json") };
        var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var body = await response.Content.ReadAsStreamAsync(ct);
        var first = await body.ReadAsync(new byte[256], ct);
        Assert.True(first > 0, "the long stream sent nothing");
        return (response, body);
    }

    /// <summary>Reads until <paramref name="marker"/> has arrived; returns everything read.</summary>
    private static async Task<string> ReadUntilAsync(Stream body, string marker, CancellationToken ct)
    {
        var text = new StringBuilder();
        var buffer = new byte[4096];
        while (!text.ToString().Contains(marker, StringComparison.Ordinal))
        {
            var read = await body.ReadAsync(buffer, ct);
            if (read == 0) break;
            text.Append(Encoding.UTF8.GetString(buffer, 0, read));
        }
        return text.ToString();
    }

    [Fact]
    public async Task AThirdRequestGets429WithRetryAfterWhileOneRunsAndOneWaitsAndTheWaiterCompletes()
    {
        var (gateway, http, admission) = await StartAsync(o => o);
        await using var _ = gateway;
        using var __ = http;
        using var longCancel = new CancellationTokenSource(Patience);
        var (longResponse, longBody) = await StartLongStreamAsync(http, longCancel.Token);
        var started = DateTime.UtcNow;

        var waiting = http.PostAsync("v1/chat/completions", Chat("wait for me", 4));
        await WaitUntilAsync(() => admission.Waiting == 1, "the second request to queue");
        Assert.Equal(1, admission.Running);

        using var refused = await http.PostAsync("v1/chat/completions", Chat("no room for me", 4));
        var body = await refused.Content.ReadAsStringAsync();
        output.WriteLine($"429 after {(DateTime.UtcNow - started).TotalMilliseconds:0} ms of the long stream: {body}");
        Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
        var retryAfter = refused.Headers.RetryAfter?.Delta;
        Assert.NotNull(retryAfter);
        Assert.InRange(retryAfter.Value, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(60));
        using (var json = JsonDocument.Parse(body))
        {
            var error = json.RootElement.GetProperty("error");
            Assert.Equal("pool_at_capacity", error.GetProperty("code").GetString());
            Assert.Equal("server_error", error.GetProperty("type").GetString());
            var message = error.GetProperty("message").GetString()!;
            Assert.StartsWith("The pool is at capacity: 1 generation is running and 1 request is waiting; retry after ", message);
            Assert.Contains($"retry after {retryAfter.Value.TotalSeconds:0} s", message);
            Assert.DoesNotContain("node", message, StringComparison.OrdinalIgnoreCase);
        }
        Assert.False(waiting.IsCompleted, "the waiting request finished before the long one gave up its slot");

        // The long generation ends (its client leaves); the waiting request gets the slot and completes.
        await longCancel.CancelAsync();
        longBody.Dispose();
        longResponse.Dispose();
        using var done = await waiting.WaitAsync(Patience);
        var doneBody = await done.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.OK, done.StatusCode);
        using (var json = JsonDocument.Parse(doneBody))
            Assert.Equal("chat.completion", json.RootElement.GetProperty("object").GetString());
        await WaitUntilAsync(() => admission.Running == 0 && admission.Waiting == 0, "every slot to be free");
    }

    [Fact]
    public async Task ApiKeysTakeTurnsForTheSlotSoOneKeysBacklogDoesNotDelayAnother()
    {
        const string keyA = "sk-admission-test-team-a-0123456789abcdef", keyB = "sk-admission-test-team-b-0123456789abcdef";
        var (gateway, http, admission) = await StartAsync(o => o with { MaxQueuedRequests = 8, ApiKeys = [keyA, keyB] });
        await using var _ = gateway;
        using var __ = http;
        // The one slot is held while the backlog forms: three of key A, then one of key B.
        await admission.EnterAsync("holder", default);
        var finished = new System.Collections.Concurrent.ConcurrentQueue<string>();
        async Task SendAsync(string key, string name)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = Chat("turn " + name, 16, extra: ",\"ignore_eos\":true") };
            request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
            using var response = await http.SendAsync(request);
            Assert.True(response.StatusCode == HttpStatusCode.OK, $"{name}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
            finished.Enqueue(name);
        }
        var sends = new List<Task>();
        foreach (var (key, name) in new[] { (keyA, "a1"), (keyA, "a2"), (keyA, "a3"), (keyB, "b1") })
        {
            sends.Add(SendAsync(key, name));
            var queued = sends.Count;
            await WaitUntilAsync(() => admission.Waiting == queued, $"{name} to queue");
        }
        admission.Release(TimeSpan.Zero);
        await Task.WhenAll(sends).WaitAsync(Patience);
        // One slot: each finishes before the next is admitted (16 tokens take far longer than writing an answer).
        Assert.Equal(["a1", "b1", "a2", "a3"], finished);
    }

    [Fact]
    public async Task AStreamingWaiterGetsKeepAliveCommentsBeforeItsFirstToken()
    {
        var (gateway, http, admission) = await StartAsync(o => o with { QueueKeepAliveInterval = TimeSpan.FromMilliseconds(100) });
        await using var _ = gateway;
        using var __ = http;
        using var longCancel = new CancellationTokenSource(Patience);
        var (longResponse, longBody) = await StartLongStreamAsync(http, longCancel.Token);

        using var cancel = new CancellationTokenSource(Patience);
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = Chat("stream me after the wait", 6, stream: true) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
        // The stream started while waiting: 200, an event stream, its session id but no route (not planned yet).
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        Assert.StartsWith("chatcmpl-", response.Headers.GetValues("x-potluck-session").Single());
        Assert.False(response.Headers.Contains("x-potluck-route"));
        Assert.Equal(1, admission.Waiting);
        await using var body = await response.Content.ReadAsStreamAsync(cancel.Token);
        var early = await ReadUntilAsync(body, ": queued\n\n", cancel.Token);
        Assert.StartsWith(": queued\n\n", early);

        await longCancel.CancelAsync();
        longBody.Dispose();
        longResponse.Dispose();
        var rest = await new StreamReader(body).ReadToEndAsync(cancel.Token);
        var text = early + rest;
        var firstData = text.IndexOf("data: ", StringComparison.Ordinal);
        Assert.True(firstData > text.IndexOf(": queued", StringComparison.Ordinal), text);
        Assert.Contains("\"chat.completion.chunk\"", text);
        Assert.DoesNotContain("\"error\"", text);
        Assert.EndsWith("data: [DONE]\n\n", text);
    }

    [Fact]
    public async Task AStreamTurnedAwayAfterItStartedEndsWithAnErrorEvent()
    {
        var (gateway, http, admission) = await StartAsync(o => o with
        {
            QueueKeepAliveInterval = TimeSpan.FromMilliseconds(100),
            QueueTimeout = TimeSpan.FromSeconds(1),
        });
        await using var _ = gateway;
        using var __ = http;
        // The one slot, held for the whole test: the stream's wait times out.
        await admission.EnterAsync("holder", default);
        try
        {
            using var cancel = new CancellationTokenSource(Patience);
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = Chat("never admitted", 4, stream: true) };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var text = await response.Content.ReadAsStringAsync(cancel.Token);
            Assert.StartsWith(": queued\n\n", text);
            var error = text[text.IndexOf("data: ", StringComparison.Ordinal)..];
            Assert.Contains("\"code\":\"pool_at_capacity\"", error);
            Assert.Contains("The pool is at capacity: no generation slot came free within 1 s", error);
            Assert.Equal(0, admission.Waiting);
        }
        finally
        {
            admission.Release(TimeSpan.Zero);
        }
    }

    [Fact]
    public async Task AnthropicCallersGetOverloadedErrorsAsA429OrAStreamErrorEvent()
    {
        var (gateway, http, admission) = await StartAsync(o => o with
        {
            QueueKeepAliveInterval = TimeSpan.FromMilliseconds(100),
            QueueTimeout = TimeSpan.FromSeconds(2),
        });
        await using var _ = gateway;
        using var __ = http;
        await admission.EnterAsync("holder", default);
        try
        {
            using var cancel = new CancellationTokenSource(Patience);
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/messages") { Content = Messages("never admitted", 4, stream: true) };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal(1, admission.Waiting);

            // The queue (of one) is full: a plain request is refused at once in Anthropic's shape.
            using var refused = await http.PostAsync("v1/messages", Messages("no room", 4, stream: false), cancel.Token);
            Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
            Assert.NotNull(refused.Headers.RetryAfter?.Delta);
            using (var json = JsonDocument.Parse(await refused.Content.ReadAsStringAsync(cancel.Token)))
            {
                Assert.Equal("error", json.RootElement.GetProperty("type").GetString());
                var error = json.RootElement.GetProperty("error");
                Assert.Equal("overloaded_error", error.GetProperty("type").GetString());
                Assert.StartsWith("The pool is at capacity: 1 generation is running and 1 request is waiting", error.GetProperty("message").GetString());
            }

            var text = await response.Content.ReadAsStringAsync(cancel.Token);
            Assert.StartsWith(": queued\n\n", text);
            Assert.Contains("event: error\n", text);
            Assert.Contains("\"overloaded_error\"", text);
            Assert.Contains("The pool is at capacity", text);
        }
        finally
        {
            admission.Release(TimeSpan.Zero);
        }
    }
}
