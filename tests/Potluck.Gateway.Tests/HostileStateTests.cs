using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Runtime;
using Potluck.Cluster;
using Potluck.Gateway.Head;
using Potluck.Gateway.Sessions;
using Xunit.Abstractions;

namespace Potluck.Gateway.Tests;

/// <summary>Hostile control-plane input on a real pool: unknown session ids and malformed shard reports.</summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class HostileStateTests(PoolFixture pool, ITestOutputHelper output)
{
    private string ChatBody(string contentJson) =>
        "{\"model\":" + JsonSerializer.Serialize(pool.ModelName) + ",\"messages\":[{\"role\":\"user\",\"content\":" + contentJson + "}],\"max_tokens\":2}";

    private static HttpContent Json(string body) => new StringContent(body, Encoding.UTF8, "application/json");

    private async Task ServesAChatAsync(HttpClient http)
    {
        using var ok = await http.PostAsync("v1/chat/completions", Json(ChatBody("\"hello\"")));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }

    private static async Task<long> SessionActivationsAsync(IGrainFactory grains)
    {
        var stats = await grains.GetGrain<IManagementGrain>(0).GetSimpleGrainStatistics();
        return stats.Where(s => s.GrainType.Contains("SessionGrain", StringComparison.OrdinalIgnoreCase)).Sum(s => (long)s.ActivationCount);
    }

    [Fact]
    public async Task UnknownSessionIdsGet404WithoutActivatingAGrain()
    {
        var grains = pool.Gateway.Services.GetRequiredService<IGrainFactory>();

        // A real session is found, and the activation count sees a grain that is activated directly.
        using var chat = await pool.Http.PostAsync("v1/chat/completions", Json(ChatBody("\"session please\"")));
        Assert.Equal(HttpStatusCode.OK, chat.StatusCode);
        var real = chat.Headers.GetValues("x-potluck-session").Single();
        Assert.Equal(HttpStatusCode.OK, (await pool.Http.GetAsync($"api/sessions/{real}")).StatusCode);
        var beforeDirect = await SessionActivationsAsync(grains);
        await grains.GetGrain<ISessionGrain>("chatcmpl-" + Guid.NewGuid().ToString("N")).Get();
        Assert.True(await SessionActivationsAsync(grains) > beforeDirect, "the activation count does not see session grains");

        var before = await SessionActivationsAsync(grains);
        string[] shapes = ["chatcmpl-{0}", "cmpl-{0}", "{0}", "chatcmpl-{0}{0}", "x", "CHATCMPL-{0}", "chatcmpl-" + new string('f', 31) + "%C3%A9"];
        for (var i = 0; i < 200; i++)
        {
            var id = string.Format(System.Globalization.CultureInfo.InvariantCulture, shapes[i % shapes.Length], Guid.NewGuid().ToString("N"));
            if (i % 50 == 49) id = new string('z', 1500);
            var get = await pool.Http.GetAsync($"api/sessions/{id}");
            Assert.Equal(HttpStatusCode.NotFound, get.StatusCode);
            using (var json = JsonDocument.Parse(await get.Content.ReadAsStringAsync()))
                Assert.Equal("session_not_found", json.RootElement.GetProperty("error").GetProperty("code").GetString());
            if (i % 4 == 0)
            {
                using var cancel = await pool.Http.PostAsync($"api/sessions/{id}/cancel", new StringContent("{}", System.Text.Encoding.UTF8, "application/json"));
                Assert.Equal(HttpStatusCode.NotFound, cancel.StatusCode);
            }
        }
        var after = await SessionActivationsAsync(grains);
        output.WriteLine($"session grain activations: {before} before 250 unknown ids, {after} after");
        Assert.True(after <= before, $"unknown session ids activated {after - before} grains");

        // The real one is still there.
        Assert.Equal(HttpStatusCode.OK, (await pool.Http.GetAsync($"api/sessions/{real}")).StatusCode);
    }

    [Fact]
    public async Task MalformedShardReportsAreRefusedAndThePoolViewKeepsRefreshing()
    {
        var grains = pool.Gateway.Services.GetRequiredService<IGrainFactory>();
        var directory = grains.GetGrain<IPoolDirectoryGrain>(PoolKeys.Default);
        var modelId = pool.Gateway.Services.GetRequiredService<ModelFrontEnd>().ModelId;
        var good = new ShardStatus("rogue", modelId, 0, 4, 4, 256, "http://127.0.0.1:1", 1024, 1024, 4096, 0, 0, 0.001,
            "S127.0.0.1:1:1", DateTime.UtcNow, false);
        ShardStatus[] bad =
        [
            good with { GrpcEndpoint = "not a url" },
            good with { GrpcEndpoint = "http://127.0.0.1:1/path" },
            good with { GrpcEndpoint = "unix:///tmp/x" },
            good with { LayerStart = 3, LayerEnd = 1 },
            good with { MeasuredMsPerToken = double.NaN },
            good with { MeasuredMsPerToken = -1 },
            good with { StepsPerSecond = double.PositiveInfinity },
            good with { NodeId = new string('n', 10_000) },
            good with { ModelId = new string('m', 10_000) },
            good with { SiloAddress = new string('s', 10_000) },
        ];
        foreach (var report in bad)
        {
            var e = await Assert.ThrowsAnyAsync<ArgumentException>(() => directory.Report(report));
            Assert.Contains("shard report refused", e.Message);
        }
        var view = await directory.GetView();
        Assert.DoesNotContain(view.Shards, s => s.Status.NodeId.StartsWith("rogue", StringComparison.Ordinal) || s.Status.NodeId.StartsWith("nnnn", StringComparison.Ordinal));

        // The gateway's view keeps refreshing and still routes.
        var asOf = pool.Gateway.Pool.Current.AsOfUtc;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (pool.Gateway.Pool.Current.AsOfUtc <= asOf && DateTime.UtcNow < deadline) await Task.Delay(100);
        Assert.True(pool.Gateway.Pool.Current.AsOfUtc > asOf, "the pool view stopped refreshing");
        using var poolJson = JsonDocument.Parse(await pool.Http.GetStringAsync("api/pool"));
        Assert.Equal(3, poolJson.RootElement.GetProperty("nodes").EnumerateArray().Count(n => n.GetProperty("state").GetString() == "healthy"));
        await ServesAChatAsync(pool.Http);
    }
}
