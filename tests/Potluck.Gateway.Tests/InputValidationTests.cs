using Microsoft.Extensions.Configuration;
using System.Text;
using Potluck.Cluster;
using Potluck.Gateway.Api;
using Potluck.Gateway.Head;

namespace Potluck.Gateway.Tests;

/// <summary>Request parsing and shard-report checks on hostile values: each a precise 400 or refusal, never a crash.</summary>
public sealed class InputValidationTests
{
    private static ApiError Refused(byte[] body, CompletionKind kind = CompletionKind.Chat) =>
        Assert.Throws<ApiErrorException>(() => CompletionRequestParser.Parse(body, kind)).Error;

    private static ApiError Refused(string body, CompletionKind kind = CompletionKind.Chat) => Refused(Encoding.UTF8.GetBytes(body), kind);

    private static string Chat(string content, string extra = "") =>
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":" + content + "}]" + extra + "}";

    [Theory]
    [InlineData(new byte[] { 0xFF })]
    [InlineData(new byte[] { 0xC3, 0x28 })] // bad continuation
    [InlineData(new byte[] { 0xED, 0xA0, 0x80 })] // a surrogate encoded as UTF-8 (CESU)
    [InlineData(new byte[] { 0xF4, 0x90, 0x80, 0x80 })] // above U+10FFFF
    [InlineData(new byte[] { 0xE2, 0x82 })] // truncated sequence
    [InlineData(new byte[] { 0xC0, 0xAF })] // overlong '/'
    public void InvalidUtf8InAStringIsA400(byte[] bad)
    {
        foreach (var (prefix, kind) in new[] { (Chat("\""), CompletionKind.Chat), ("{\"model\":\"m\",\"prompt\":\"", CompletionKind.Text) })
        {
            var head = Encoding.UTF8.GetBytes(kind == CompletionKind.Chat ? "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"" : prefix);
            var tail = Encoding.UTF8.GetBytes(kind == CompletionKind.Chat ? "\"}]}" : "\"}");
            var error = Refused([.. head, .. bad, .. tail], kind);
            Assert.Equal(400, error.Status);
            Assert.Equal("invalid_json", error.Code);
            Assert.Contains("UTF-8", error.Message);
        }
        // In a key or an ignored field too: the whole body must be UTF-8.
        Assert.Equal(400, Refused([.. Encoding.UTF8.GetBytes("{\"x"), .. bad, .. Encoding.UTF8.GetBytes("\":1}")]).Status);
    }

    [Theory]
    [InlineData("\"\\ud800\"", "messages[0].content")]
    [InlineData("\"a\\udfffb\"", "messages[0].content")]
    [InlineData("\"\\ud800\\u0041\"", "messages[0].content")]
    [InlineData("[{\"type\":\"text\",\"text\":\"\\udbff\"}]", "messages[0].content[0].text")]
    public void LoneSurrogatesInContentAre400s(string content, string param)
    {
        var error = Refused(Chat(content));
        Assert.Equal(400, error.Status);
        Assert.Equal("invalid_string", error.Code);
        Assert.Equal(param, error.Param);
    }

    [Theory]
    [InlineData("{\"model\":\"\\ud800\",\"messages\":[]}", "model")]
    [InlineData("{\"model\":\"m\",\"messages\":[{\"role\":\"\\udc00\",\"content\":\"x\"}]}", "messages[0].role")]
    [InlineData("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":\"\\ud800\"}", "stop")]
    [InlineData("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"ok\",\"\\ud800\"]}", "stop")]
    [InlineData("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"user\":\"\\ud800\"}", "user")]
    [InlineData("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"\\ud800\",\"text\":\"x\"}]}]}", "messages[0].content[0].type")]
    public void LoneSurrogatesInEveryStringFieldAre400s(string body, string param)
    {
        var error = Refused(body);
        Assert.Equal(400, error.Status);
        Assert.Equal(param, error.Param);
    }

    [Fact]
    public void LoneSurrogateInThePromptIsA400()
    {
        Assert.Equal("prompt", Refused("{\"model\":\"m\",\"prompt\":\"\\ud800\"}", CompletionKind.Text).Param);
        Assert.Equal("prompt", Refused("{\"model\":\"m\",\"prompt\":[\"\\ud800\"]}", CompletionKind.Text).Param);
        // A valid pair is fine.
        Assert.Equal("\U0001F642", CompletionRequestParser.Parse(Encoding.UTF8.GetBytes("{\"model\":\"m\",\"prompt\":\"\\ud83d\\ude42\"}"), CompletionKind.Text).PromptText);
    }

    [Theory]
    [InlineData("max_tokens", "1e308")]
    [InlineData("max_tokens", "-1e308")]
    [InlineData("max_tokens", "1e400")]
    [InlineData("max_tokens", "9223372036854775808")]
    [InlineData("max_tokens", "2147483648")]
    [InlineData("max_completion_tokens", "1e300")]
    [InlineData("n", "1e308")]
    [InlineData("n", "99999999999999999999999")]
    [InlineData("temperature", "1e308")]
    [InlineData("temperature", "1e400")]
    [InlineData("temperature", "-1e400")]
    [InlineData("top_p", "1e-400000")] // underflows to 0: in range, accepted below
    [InlineData("top_k", "1e308")]
    [InlineData("seed", "1e308")]
    [InlineData("seed", "18446744073709551616")]
    [InlineData("presence_penalty", "1e39")] // above float.MaxValue
    [InlineData("frequency_penalty", "-1e39")]
    public void HugeNumbersAre400s(string field, string value)
    {
        var body = Chat("\"x\"", $",\"{field}\":{value}");
        if (value == "1e-400000")
        {
            Assert.Equal(0f, CompletionRequestParser.Parse(Encoding.UTF8.GetBytes(body), CompletionKind.Chat).TopP);
            return;
        }
        var error = Refused(body);
        Assert.Equal(400, error.Status);
        Assert.Equal(field, error.Param);
    }

    [Theory]
    [InlineData("NaN")]
    [InlineData("Infinity")]
    [InlineData("-Infinity")]
    [InlineData("\"NaN\"")]
    public void NonNumbersAre400s(string value)
    {
        var error = Refused(Chat("\"x\"", $",\"temperature\":{value}"));
        Assert.Equal(400, error.Status);
    }

    [Fact]
    public void OversizeModelNamesAreNotEchoed()
    {
        var error = Refused("{\"model\":\"" + new string('m', 100_000) + "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
        Assert.Equal("model", error.Param);
        Assert.True(error.Message.Length < 200);
        var part = Refused(Chat("[{\"type\":\"" + new string('t', 100_000) + "\",\"text\":\"x\"}]"));
        Assert.True(part.Message.Length < 300);
    }

    [Fact]
    public void DeepNestingIsA400()
    {
        Assert.Equal("invalid_json", Refused(new string('[', 100_000) + new string(']', 100_000)).Code);
        Assert.Equal("invalid_json", Refused(Chat("\"x\"", ",\"extra\":" + new string('{', 40) + new string('}', 40))).Code);
    }

    [Fact]
    public async Task TokenizerSlotsBoundConcurrencyAndTime()
    {
        using var slots = new TokenizerSlots(1);
        using var release = new ManualResetEventSlim();
        var blocked = slots.RunAsync(() => { release.Wait(TimeSpan.FromSeconds(10)); return 1; }, TimeSpan.FromMilliseconds(200), CancellationToken.None);
        await Assert.ThrowsAsync<TimeoutException>(() => blocked);
        // The abandoned call still holds the only slot: the next one is refused as busy, quickly.
        var started = DateTime.UtcNow;
        await Assert.ThrowsAsync<TokenizerBusyException>(() => slots.RunAsync(() => 2, TimeSpan.FromMilliseconds(200), CancellationToken.None));
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(2));
        release.Set();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            try
            {
                Assert.Equal(3, await slots.RunAsync(() => 3, TimeSpan.FromSeconds(1), CancellationToken.None));
                break;
            }
            catch (TokenizerBusyException) when (DateTime.UtcNow < deadline)
            {
            }
        }
    }

    private static ShardStatus Good() => new("node-a", new string('a', 64), 0, 2, 4, 256, "http://127.0.0.1:5000", 2048, 1024, 4096, 0,
        0, 1.5, "S127.0.0.1:11111:1", DateTime.UtcNow, false);

    [Fact]
    public void WellFormedReportsPass()
    {
        Assert.Null(Good().Problem());
        Assert.Null((Good() with { GrpcEndpoint = "https://node.example:443" }).Problem());
        Assert.Null((Good() with { GrpcEndpoint = "http://[::1]:5000/" }).Problem());
        Assert.Null((Good() with { LayerStart = 2, LayerEnd = 4 }).Problem());
    }

    public static TheoryData<string, ShardStatus> BadReports() => new()
    {
        { "endpoint", Good() with { GrpcEndpoint = "not a url" } },
        { "endpoint", Good() with { GrpcEndpoint = "" } },
        { "endpoint", Good() with { GrpcEndpoint = "127.0.0.1:5000" } },
        { "endpoint", Good() with { GrpcEndpoint = "ftp://127.0.0.1:5000" } },
        { "endpoint", Good() with { GrpcEndpoint = "file:///etc/passwd" } },
        { "endpoint", Good() with { GrpcEndpoint = "http://127.0.0.1:5000/admin" } },
        { "endpoint", Good() with { GrpcEndpoint = "http://127.0.0.1:5000?x=1" } },
        { "endpoint", Good() with { GrpcEndpoint = "http://user:pw@127.0.0.1:5000" } },
        { "endpoint", Good() with { GrpcEndpoint = "http://127.0.0.1:99999" } },
        { "endpoint", Good() with { GrpcEndpoint = "http://" + new string('a', 300) + ":1" } },
        { "endpoint", Good() with { GrpcEndpoint = null! } },
        { "layers", Good() with { LayerStart = 3, LayerEnd = 2 } },
        { "layers", Good() with { LayerStart = 2, LayerEnd = 2 } },
        { "layers", Good() with { LayerStart = -1 } },
        { "layers", Good() with { LayerEnd = 5 } },
        { "layer count", Good() with { LayerCount = 0 } },
        { "width", Good() with { Width = 0 } },
        { "ms per token", Good() with { MeasuredMsPerToken = double.NaN } },
        { "ms per token", Good() with { MeasuredMsPerToken = -1 } },
        { "ms per token", Good() with { MeasuredMsPerToken = double.PositiveInfinity } },
        { "steps per second", Good() with { StepsPerSecond = double.NaN } },
        { "steps per second", Good() with { StepsPerSecond = -0.5 } },
        { "free KV", Good() with { FreeKvTokens = -1 } },
        { "free KV", Good() with { FreeKvTokens = 4096 } },
        { "open sessions", Good() with { OpenSessions = -3 } },
        { "node id", Good() with { NodeId = "" } },
        { "node id", Good() with { NodeId = "a/b" } },
        { "node id", Good() with { NodeId = new string('n', 129) } },
        { "node id", Good() with { NodeId = "bad\nid" } },
        { "model id", Good() with { ModelId = new string('m', 129) } },
        { "silo address", Good() with { SiloAddress = new string('s', 300) } },
    };

    [Theory]
    [MemberData(nameof(BadReports))]
    public void MalformedReportsAreRefused(string what, ShardStatus report) =>
        Assert.Contains(what, report.Problem() ?? "(accepted)");
}

/// <summary>The input-limit options bind from configuration and are validated.</summary>
public sealed class InputLimitOptionsTests
{
    private static GatewayOptions Bind(params (string Key, string Value)[] values) =>
        GatewayOptions.FromConfiguration(new Microsoft.Extensions.Configuration.ConfigurationBuilder()
            .AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>($"Potluck:Gateway:{v.Key}", v.Value))
                .Append(new KeyValuePair<string, string?>("Potluck:Gateway:ModelPath", "m.gguf")))
            .Build());

    [Fact]
    public void DefaultsAndOverrides()
    {
        var defaults = Bind();
        Assert.Null(defaults.MaxPromptCharacters);
        Assert.Equal(TimeSpan.FromSeconds(5), defaults.TokenizeTimeout);
        var set = Bind(("MaxPromptCharacters", "1000"), ("TokenizeTimeout", "0.5"));
        Assert.Equal(1000, set.MaxPromptCharacters);
        Assert.Equal(TimeSpan.FromMilliseconds(500), set.TokenizeTimeout);
        Assert.Throws<Potluck.Hosting.ConfigurationUsageException>(() => Bind(("MaxPromptCharacters", "0")));
        Assert.Throws<Potluck.Hosting.ConfigurationUsageException>(() => Bind(("TokenizeTimeout", "-1")));
        Assert.False(new GatewayOptionsValidator().Validate(null, defaults with { MaxPromptCharacters = -5 }).Succeeded);
    }
}
