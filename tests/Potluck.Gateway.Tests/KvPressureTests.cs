using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Potluck.Cluster;
using Potluck.Gateway.Telemetry;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Protocol.V1;
using Xunit.Abstractions;

namespace Potluck.Gateway.Tests;

/// <summary>
/// A node whose KV budget is four blocks, filled by sessions reserved through its shard grain (the control plane), so
/// the test decides when room returns. A generation that outgrows what is left is preempted: it gives its KV back,
/// waits, and re-prefills from its token ids in the recorded step shapes, so its text equals the text of a run that
/// never ran out. With no room at all within the wait, the client gets 429 saying the pool is at capacity.
/// </summary>
[ProcessTest]
public sealed class KvPressureTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int Budget = 4 * LayerSpan.KvBlockTokens;
    // Prompt plus output cross the first block's end: the session asks for a second block mid-generation.
    private const int MaxTokens = 120;
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(120);

    private readonly string _modelPath = TestModels.Small(GgmlType.Q8_0);
    private NodeProcess _node = null!;
    private GatewayApp _gateway = null!;
    private HttpClient _http = null!;
    private string _model = "";

    public async Task InitializeAsync()
    {
        _node = NodeProcess.Start(new NodeLaunch("kv-node", _modelPath, 0, 4)
        {
            Environment = new Dictionary<string, string>
            {
                ["Potluck__Node__KvBudgetTokens"] = Budget.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["Logging__LogLevel__Default"] = "Warning",
            },
        }, output);
        try
        {
            _gateway = await StartGatewayAsync(TimeSpan.FromSeconds(90));
            _http = new HttpClient { BaseAddress = _gateway.BaseAddress, Timeout = RequestTimeout };
            await PoolFixture.WaitReadyAsync(_http, PoolFixture.StartTimeout, () => _node.Output);
            using var models = JsonDocument.Parse(await _http.GetStringAsync("v1/models"));
            _model = models.RootElement.GetProperty("data")[0].GetProperty("id").GetString()!;
        }
        catch
        {
            await DisposeAsync();
            throw;
        }
    }

    private async Task<GatewayApp> StartGatewayAsync(TimeSpan kvWait)
    {
        var app = GatewayHost.Build(new GatewayOptions
        {
            Security = TestPki.Settings(),
            ModelPath = _modelPath,
            Port = 0,
            SiloPort = Ports.Free(),
            PrimarySiloEndpoint = $"127.0.0.1:{_node.SiloPort}",
            WireType = HiddenType.F32,
            Threads = 1,
            PoolRefreshPeriod = TimeSpan.FromMilliseconds(250),
            GatewayId = $"gateway-{Guid.NewGuid():N}"[..20],
            StepTimeout = TimeSpan.FromSeconds(30),
            KvWaitTimeout = kvWait,
        }, logging => logging.SetMinimumLevel(LogLevel.Warning));
        using var timeout = new CancellationTokenSource(PoolFixture.StartTimeout);
        await app.StartAsync(timeout.Token);
        return app;
    }

    public async Task DisposeAsync()
    {
        _http?.Dispose();
        if (_gateway is not null) await _gateway.DisposeAsync();
        if (_node is not null) await _node.DisposeAsync();
    }

    private StringContent Completion() => new(JsonSerializer.Serialize(new
    {
        model = _model,
        prompt = "When the pool is full the session",
        max_tokens = MaxTokens,
        temperature = 0,
        ignore_eos = true,
    }), Encoding.UTF8, "application/json");

    private IShardGrain Shard(GatewayApp gateway) =>
        gateway.Services.GetRequiredService<IGrainFactory>().GetGrain<IShardGrain>(ShardKeys.For("kv-node", 0, 4));

    [Fact]
    public async Task A_preempted_generation_resumes_when_room_returns_with_the_text_of_an_uninterrupted_run()
    {
        using var solo = await _http.PostAsync("v1/completions", Completion());
        var soloBody = await solo.Content.ReadAsStringAsync();
        Assert.True(solo.IsSuccessStatusCode, soloBody);
        var expected = Text(soloBody);

        // Three of the four blocks held elsewhere: the generation opens in the last one and outgrows it.
        var shard = Shard(_gateway);
        for (var i = 0; i < 3; i++) await shard.ReserveSession($"hog-{i}", LayerSpan.KvBlockTokens);
        var telemetry = _gateway.Services.GetRequiredService<GatewayTelemetry>();
        var before = telemetry.PreemptedGenerations;
        var pressed = _http.PostAsync("v1/completions", Completion());
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (telemetry.PreemptedGenerations == before)
        {
            Assert.True(DateTime.UtcNow < deadline && !pressed.IsCompleted, $"no preemption within 60 s\n{_node.Output}");
            await Task.Delay(50);
        }
        Assert.False(pressed.IsCompleted);
        for (var i = 0; i < 3; i++) Assert.True(await shard.CloseSession($"hog-{i}", cancelled: false));

        using var response = await pressed;
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, body);
        Assert.Equal(expected, Text(body));
    }

    [Fact]
    public async Task With_no_room_within_the_wait_the_client_gets_429_saying_the_pool_is_at_capacity()
    {
        await using var impatient = await StartGatewayAsync(TimeSpan.FromSeconds(2));
        using var http = new HttpClient { BaseAddress = impatient.BaseAddress, Timeout = RequestTimeout };
        await PoolFixture.WaitReadyAsync(http, PoolFixture.StartTimeout, () => _node.Output);
        var shard = Shard(impatient);
        for (var i = 0; i < 4; i++) await shard.ReserveSession($"full-{i}", LayerSpan.KvBlockTokens);
        try
        {
            using var response = await http.PostAsync("v1/completions", Completion());
            var body = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.TooManyRequests, $"{(int)response.StatusCode}: {body}");
            Assert.NotNull(response.Headers.RetryAfter);
            using var json = JsonDocument.Parse(body);
            var error = json.RootElement.GetProperty("error");
            Assert.Equal("pool_at_capacity", error.GetProperty("code").GetString());
            Assert.Contains("at capacity", error.GetProperty("message").GetString());
            Assert.DoesNotContain("fail", error.GetProperty("message").GetString());
        }
        finally
        {
            for (var i = 0; i < 4; i++) await shard.CloseSession($"full-{i}", cancelled: false);
        }
    }

    private static string Text(string body)
    {
        using var json = JsonDocument.Parse(body);
        return json.RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;
    }
}
