using System.Diagnostics;
using System.Net;
using System.Runtime;
using System.Text;
using System.Text.Json;
using Potluck.Protocol.V1;
using Xunit.Abstractions;

namespace Potluck.Gateway.Tests;

/// <summary>
/// Issue 12's flood: hostile requests against a real pool are each refused with a 4xx within 2 s, the gateway keeps
/// serving, and its memory (this process's RSS: the gateway is in-process) comes back to the baseline. Its own
/// collection, run alone, so no other test's allocations move the RSS.
/// </summary>
[Collection(IsolatedPoolCollection.Name)]
[ProcessTest]
public sealed class HostileFloodTests(PoolFixture pool, ITestOutputHelper output)
{
    private const int Requests = 300;
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(2);
    // One 4 MiB prompt of a single repeated character: quadratic in llama.cpp's tokenizer, so it must never get there.
    private static readonly string Huge = new('a', 4 << 20);

    private string Model => JsonSerializer.Serialize(pool.ModelName);

    private string ChatBody(string contentJson, string extra = "") =>
        "{\"model\":" + Model + ",\"messages\":[{\"role\":\"user\",\"content\":" + contentJson + "}],\"max_tokens\":2" + extra + "}";

    private static HttpContent Json(string body) => new StringContent(body, Encoding.UTF8, "application/json");

    private static HttpContent JsonBytes(byte[] body)
    {
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        return content;
    }

    /// <summary>Every kind of hostile request, as (name, path, content factory).</summary>
    private List<(string Kind, string Path, Func<HttpContent> Content)> Kinds()
    {
        var m = Model;
        byte[] Utf8Bad(byte[] bad) =>
        [
            .. Encoding.UTF8.GetBytes("{\"model\":" + m + ",\"messages\":[{\"role\":\"user\",\"content\":\"hi "), .. bad,
            .. Encoding.UTF8.GetBytes("\"}],\"max_tokens\":2}"),
        ];
        var hugeChat = Encoding.UTF8.GetBytes(ChatBody(JsonSerializer.Serialize(Huge)));
        var hugeText = Encoding.UTF8.GetBytes("{\"model\":" + m + ",\"prompt\":" + JsonSerializer.Serialize(Huge) + ",\"max_tokens\":2}");
        return
        [
            ("malformed", "v1/chat/completions", () => Json("{\"model\":" + m + ",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}")),
            ("malformed", "v1/completions", () => Json("{\"model\" " + m + "}")),
            ("malformed", "v1/chat/completions", () => Json("{'model':'x'}")),
            ("malformed", "v1/chat/completions", () => Json("\u0000\u0001")),
            ("utf8", "v1/chat/completions", () => JsonBytes(Utf8Bad([0xFF, 0xFE]))),
            ("utf8", "v1/chat/completions", () => JsonBytes(Utf8Bad([0xED, 0xA0, 0x80]))),
            ("utf8", "v1/chat/completions", () => JsonBytes(Utf8Bad([0xC0, 0xAF]))),
            ("utf8", "v1/completions", () => JsonBytes([.. Encoding.UTF8.GetBytes("{\"model\":" + m + ",\"prompt\":\""), 0xF8, 0x88, .. "\"}"u8.ToArray()])),
            ("surrogate", "v1/chat/completions", () => Json(ChatBody("\"\\ud800\""))),
            ("surrogate", "v1/chat/completions", () => Json(ChatBody("\"x\\udfff\\ud800y\""))),
            ("surrogate", "v1/chat/completions", () => Json(ChatBody("\"x\"", ",\"stop\":[\"\\ud800\"]"))),
            ("surrogate", "v1/completions", () => Json("{\"model\":" + m + ",\"prompt\":\"\\udbff\"}")),
            ("huge-prompt", "v1/chat/completions", () => JsonBytes(hugeChat)),
            ("huge-prompt", "v1/completions", () => JsonBytes(hugeText)),
            ("numbers", "v1/chat/completions", () => Json(ChatBody("\"x\"", ",\"max_tokens\":1e308"))),
            ("numbers", "v1/chat/completions", () => Json(ChatBody("\"x\"", ",\"n\":1e308"))),
            ("numbers", "v1/chat/completions", () => Json(ChatBody("\"x\"", ",\"temperature\":1e400"))),
            ("numbers", "v1/chat/completions", () => Json(ChatBody("\"x\"", ",\"temperature\":NaN"))),
            ("numbers", "v1/chat/completions", () => Json(ChatBody("\"x\"", ",\"seed\":1e308"))),
            ("numbers", "v1/chat/completions", () => Json(ChatBody("\"x\"", ",\"top_k\":123456789012345678901234567890"))),
            ("numbers", "v1/completions", () => Json("{\"model\":" + m + ",\"prompt\":[1e308]}")),
            ("numbers", "v1/chat/completions", () => Json(ChatBody("\"x\"", ",\"max_tokens\":100000"))),
            ("content-type", "v1/chat/completions", () => new StringContent("model=x&messages=hi", Encoding.UTF8, "application/x-www-form-urlencoded")),
            ("content-type", "v1/completions", () => new StringContent("hello there", Encoding.UTF8, "text/plain")),
            ("content-type", "v1/chat/completions", () => new MultipartFormDataContent { { new StringContent("x"), "model" } }),
            ("nesting", "v1/chat/completions", () => Json(new string('[', 200_000) + new string(']', 200_000))),
            ("nesting", "v1/chat/completions", () => Json(ChatBody("\"x\"", ",\"extra\":" + new string('{', 1000)))),
            ("context", "v1/completions", () => Json("{\"model\":" + m + ",\"prompt\":" + JsonSerializer.Serialize(new string('b', 4000)) + ",\"max_tokens\":4}")),
        ];
    }

    private static long RssAfterGc()
    {
        // Let in-flight work finish and the thread pool settle, as an idle gateway would.
        Thread.Sleep(500);
        for (var i = 0; i < 3; i++)
        {
            GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
            GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
            GC.WaitForPendingFinalizers();
        }
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line.AsSpan(6).Trim().TrimEnd("kB").Trim(), System.Globalization.CultureInfo.InvariantCulture) * 1024;
        throw new InvalidOperationException("no VmRSS in /proc/self/status");
    }

    private async Task<(int Status, TimeSpan Took, string Body)> SendAsync(HttpClient http, string path, HttpContent content)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = content };
        var started = Stopwatch.StartNew();
        using var response = await http.SendAsync(request);
        var body = await response.Content.ReadAsStringAsync();
        return ((int)response.StatusCode, started.Elapsed, body);
    }

    private async Task ServesAChatAsync(HttpClient http)
    {
        using var ok = await http.PostAsync("v1/chat/completions", Json(ChatBody("\"hello after the flood\"")));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        using var json = JsonDocument.Parse(await ok.Content.ReadAsStringAsync());
        Assert.Equal("chat.completion", json.RootElement.GetProperty("object").GetString());
    }

    [Fact]
    public async Task FloodOfHostileRequestsGets4xxQuicklyAndMemoryReturnsToBaseline()
    {
        // A gateway of its own whose body limit lets a 4 MiB prompt through to the character cap.
        await using var gateway = await pool.StartGatewayAsync(pool.Seed, HiddenType.F32, o => o with { MaxBodyBytes = 8 << 20 });
        using var http = new HttpClient { BaseAddress = gateway.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        await PoolFixture.WaitReadyAsync(http, PoolFixture.StartTimeout);
        var kinds = Kinds();

        // Warm-up: every kind twice, then 150 of the same mix and a normal chat, so one-time costs are in the baseline:
        // JIT, Kestrel's block pool, ArrayPool buckets of the threads that serve 4 MiB bodies, and a malloc arena for each
        // thread that tokenizes. Measured: RSS rises about 20 % over the first ~150 hostile requests, then stays flat.
        for (var round = 0; round < 2; round++)
            foreach (var (_, path, content) in kinds)
                await SendAsync(http, path, content());
        var warm = new Random(7);
        for (var i = 0; i < 150; i++)
        {
            var (_, path, content) = kinds[warm.Next(kinds.Count)];
            await SendAsync(http, path, content());
        }
        await ServesAChatAsync(http);
        var baseline = RssAfterGc();
        output.WriteLine($"baseline: RSS {baseline >> 20} MiB, GC committed {GC.GetGCMemoryInfo().TotalCommittedBytes >> 20} MiB, heap {GC.GetTotalMemory(false) >> 20} MiB, threads {System.Threading.ThreadPool.ThreadCount}");

        var random = new Random(1212);
        var byKind = new Dictionary<string, int>();
        var slowest = TimeSpan.Zero;
        var slowestByKind = new Dictionary<string, double>();
        for (var i = 0; i < Requests; i++)
        {
            var (kind, path, content) = kinds[random.Next(kinds.Count)];
            var (status, took, body) = await SendAsync(http, path, content());
            var what = $"request {i} ({kind}, {path}) answered {status} in {took.TotalMilliseconds:F0} ms: {body[..Math.Min(300, body.Length)]}";
            Assert.True(status is >= 400 and < 500, what);
            Assert.True(took < Limit, what);
            using var json = JsonDocument.Parse(body);
            Assert.False(string.IsNullOrWhiteSpace(json.RootElement.GetProperty("error").GetProperty("message").GetString()), what);
            if (kind == "huge-prompt" || kind == "context")
                Assert.Equal("context_length_exceeded", json.RootElement.GetProperty("error").GetProperty("code").GetString());
            byKind[kind] = byKind.GetValueOrDefault(kind) + 1;
            if (took > slowest) slowest = took;
            slowestByKind[kind] = Math.Max(slowestByKind.GetValueOrDefault(kind), took.TotalMilliseconds);
        }
        Assert.Equal(kinds.Select(k => k.Kind).Distinct().Count(), byKind.Count);

        await ServesAChatAsync(http);
        var after = RssAfterGc();
        output.WriteLine($"after: RSS {after >> 20} MiB, GC committed {GC.GetGCMemoryInfo().TotalCommittedBytes >> 20} MiB, heap {GC.GetTotalMemory(false) >> 20} MiB, threads {System.Threading.ThreadPool.ThreadCount}");
        output.WriteLine($"{Requests} hostile requests ({string.Join(", ", byKind.Select(k => $"{k.Key} {k.Value}"))}), slowest {slowest.TotalMilliseconds:F0} ms " +
                         $"({string.Join(", ", slowestByKind.Select(k => $"{k.Key} {k.Value:F0}"))}); " +
                         $"RSS after GC: baseline {baseline >> 20} MiB, after {after >> 20} MiB ({100.0 * (after - baseline) / baseline:+0.0;-0.0} %)");
        Assert.True(after <= baseline * 1.10, $"RSS grew from {baseline >> 20} MiB to {after >> 20} MiB");
    }
}

/// <summary>A pool of its own for tests that measure the process, run after every parallel collection and alone.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class IsolatedPoolCollection : ICollectionFixture<PoolFixture>
{
    public const string Name = "isolated pool";
}
