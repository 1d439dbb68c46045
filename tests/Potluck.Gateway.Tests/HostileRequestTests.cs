using System.Net;
using System.Text;
using System.Text.Json;

namespace Potluck.Gateway.Tests;

/// <summary>Hundreds of malformed and hostile requests: every answer is a well-formed 4xx OpenAI error, and the gateway keeps serving.</summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class HostileRequestTests(PoolFixture pool)
{
    private const int Requests = 300;

    private string Valid(Random random) => JsonSerializer.Serialize(new
    {
        model = pool.ModelName,
        messages = new[] { new { role = "user", content = "hi " + random.Next(1000) } },
        max_tokens = 2,
    });

    /// <summary>One hostile request body (and path/method/content type) chosen by the seeded generator.</summary>
    private (HttpMethod Method, string Path, HttpContent? Content, string Expect) Hostile(Random random)
    {
        var m = pool.ModelName;
        string[] bodies =
        [
            "", "{", "[]", "null", "42", "\"text\"", "{\"model\":", "{}\u0000", "{\"model\":\"" + m + "\"}",
            "{\"model\":\"" + m + "\",\"messages\":[]}",
            "{\"model\":\"" + m + "\",\"messages\":\"hi\"}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"content\":\"x\"}]}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":5}]}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":-1}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":\"ten\"}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1e400}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":100000}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":3}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":1.5}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":-3}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"min_p\":-0.1}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"presence_penalty\":9}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"frequency_penalty\":[1]}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":\"abc\"}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1,2]}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":\"\"}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":{\"include_usage\":true}}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":9}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"user\":17}",
            "{\"model\":\"nope\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            "{\"model\":17,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            "{\"model\":\"" + m + "\",\"messages\":[{\"role\":\"user\",\"content\":\"" + new string('z', 3000) + "\"}]}",
            new string('[', 5000) + new string(']', 5000),
        ];
        var pick = random.Next(bodies.Length + 8);
        if (pick < bodies.Length)
        {
            var body = bodies[pick];
            // Some bodies get a wrong or missing content type: the gateway must not care.
            var type = random.Next(3) switch { 0 => "application/json", 1 => "text/plain", _ => "application/x-www-form-urlencoded" };
            var path = random.Next(2) == 0 ? "v1/chat/completions" : "v1/completions";
            return (HttpMethod.Post, path, new StringContent(body, Encoding.UTF8, type), "4xx");
        }
        return (pick - bodies.Length) switch
        {
            0 => (HttpMethod.Post, "v1/completions", new StringContent("{\"model\":\"" + m + "\",\"prompt\":[99999999]}", Encoding.UTF8, "application/json"), "4xx"),
            1 => (HttpMethod.Post, "v1/completions", new StringContent("{\"model\":\"" + m + "\",\"prompt\":{\"a\":1}}", Encoding.UTF8, "application/json"), "4xx"),
            2 => (HttpMethod.Post, "v1/completions", new ByteArrayContent(RandomBytes(random, 512)), "4xx"),
            3 => (HttpMethod.Post, "v1/chat/completions", new StringContent(new string('x', 70 * 1024), Encoding.UTF8, "application/json"), "413"),
            4 => (HttpMethod.Get, "v1/chat/completions", null, "4xx"),
            5 => (HttpMethod.Delete, "v1/models", null, "4xx"),
            6 => (HttpMethod.Post, "v1/nothing/here", new StringContent("{}"), "4xx"),
            _ => (HttpMethod.Post, "v1/completions", new StringContent("{\"model\":\"" + m + "\",\"prompt\":\"" + new string('a', 600) + "\",\"max_tokens\":4}", Encoding.UTF8, "application/json"), "context"),
        };
    }

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    [Fact]
    public async Task EveryHostileRequestGetsAWellFormedClientError()
    {
        var random = new Random(20251125);
        var statuses = new Dictionary<int, int>();
        for (var i = 0; i < Requests; i++)
        {
            var (method, path, content, expect) = Hostile(random);
            using var request = new HttpRequestMessage(method, path) { Content = content };
            using var response = await pool.Http.SendAsync(request);
            var status = (int)response.StatusCode;
            statuses[status] = statuses.GetValueOrDefault(status) + 1;
            var text = await response.Content.ReadAsStringAsync();
            var what = $"request {i} ({method} {path}) answered {status}: {text[..Math.Min(300, text.Length)]}";
            Assert.True(status is >= 400 and < 500, what);
            if (expect == "413") Assert.True(status == 413, what);
            using var json = JsonDocument.Parse(text);
            var error = json.RootElement.GetProperty("error");
            Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("message").GetString()), what);
            Assert.Equal(JsonValueKind.String, error.GetProperty("type").ValueKind);
            Assert.True(error.TryGetProperty("param", out _), what);
            Assert.True(error.TryGetProperty("code", out _), what);
            if (expect == "context") Assert.Equal("context_length_exceeded", error.GetProperty("code").GetString());
        }
        Assert.True(statuses.Count >= 4, $"too little variety: {string.Join(", ", statuses)}");

        // Still serving.
        using var ok = await pool.Http.PostAsync("v1/chat/completions", new StringContent(Valid(random), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        using var health = await pool.Http.GetAsync("healthz");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
    }
}
