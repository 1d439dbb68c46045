using Microsoft.Extensions.Logging;
using System.Net;
using System.Text;
using System.Text.Json;
using Potluck.Protocol.V1;
using Potluck.Inference.Gguf;

namespace Potluck.Gateway.Tests;

/// <summary>A gateway whose cluster has no nodes: not ready, and requests get a 503 naming the missing layers.</summary>
[ProcessTest]
public sealed class NoPoolTests
{
    [Fact]
    public async Task WithoutNodesEveryLayerIsReportedMissing()
    {
        var gateway = GatewayHost.Build(new GatewayOptions
        {
            Security = TestPki.Settings(),
            ModelPath = TestModels.Small(GgmlType.Q8_0),
            Port = 0,
            SiloPort = Ports.Free(),
            Threads = 1,
            WireType = HiddenType.F16,
            GatewayId = "lonely-gateway",
        }, logging => logging.SetMinimumLevel(LogLevel.Warning));
        await using (gateway)
        {
            using (var start = new CancellationTokenSource(TimeSpan.FromSeconds(60))) await gateway.StartAsync(start.Token);
            using var http = new HttpClient { BaseAddress = gateway.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
            using var ready = await http.GetAsync("readyz");
            Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
            var name = (await JsonDocument.ParseAsync(await http.GetStreamAsync("v1/models"))).RootElement.GetProperty("data")[0].GetProperty("id").GetString();
            using var response = await http.PostAsync("v1/chat/completions",
                new StringContent($$"""{"model":"{{name}}","messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
            using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
            var error = json.RootElement.GetProperty("error");
            Assert.Equal("pool_unavailable", error.GetProperty("code").GetString());
            Assert.Contains("layers [0, 4)", error.GetProperty("message").GetString());
        }
    }
}
