using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using OpenAI;
using OpenAI.Models;

namespace Potluck.Gateway.Tests.Access;

/// <summary>The desktop default: loopback, no keys, no admin key, no CORS origin.</summary>
public sealed class OpenGateway : AccessGateway
{
    protected override GatewayOptions Configure(GatewayOptions options) => options;
}

[ProcessTest]
public sealed class OpenGatewayTests(OpenGateway gateway) : IClassFixture<OpenGateway>
{
    [Fact]
    public async Task Without_keys_on_loopback_any_key_or_none_is_served_as_the_readme_examples_expect()
    {
        using var anonymous = gateway.Client();
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("v1/models")).StatusCode);
        using var unused = gateway.Client();
        unused.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "unused");
        Assert.Equal(HttpStatusCode.OK, (await unused.GetAsync("v1/models")).StatusCode);
        var sdk = new OpenAIModelClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(gateway.BaseAddress, "v1") });
        OpenAIModelCollection models = await sdk.GetModelsAsync();
        Assert.Equal(gateway.ModelName, Assert.Single(models).Id);
        // Operator endpoints are open on loopback without an admin key (desktop `serve`), and so is the dashboard.
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("api/pool")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("metrics")).StatusCode);
        Assert.Contains("/api/pool", await anonymous.GetStringAsync(""));
    }

    [Fact]
    public async Task Still_json_only_local_hosts_only_and_no_cors()
    {
        using var http = gateway.Client();
        using var text = await http.PostAsync("v1/chat/completions", new StringContent("{\"model\":\"x\",\"messages\":[]}", Encoding.UTF8, "text/plain"));
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, text.StatusCode);

        using var rebound = new HttpRequestMessage(HttpMethod.Get, "api/pool");
        rebound.Headers.Host = "rebind.attacker.example";
        Assert.Equal(HttpStatusCode.BadRequest, (await http.SendAsync(rebound)).StatusCode);
        foreach (var host in new[] { "localhost", "127.0.0.1", "[::1]" })
        {
            using var local = new HttpRequestMessage(HttpMethod.Get, "v1/models");
            local.Headers.Host = $"{host}:{gateway.BaseAddress.Port}";
            Assert.Equal(HttpStatusCode.OK, (await http.SendAsync(local)).StatusCode);
        }

        using var preflight = new HttpRequestMessage(HttpMethod.Options, "v1/chat/completions");
        preflight.Headers.Add("Origin", "http://localhost:3000");
        preflight.Headers.Add("Access-Control-Request-Method", "POST");
        preflight.Headers.Add("Access-Control-Request-Headers", "content-type");
        using var refused = await http.SendAsync(preflight);
        Assert.False(refused.Headers.Contains("Access-Control-Allow-Origin"));
        Assert.False(refused.IsSuccessStatusCode);
        using var simple = new HttpRequestMessage(HttpMethod.Get, "v1/models");
        simple.Headers.Add("Origin", "http://localhost:3000");
        Assert.False((await http.SendAsync(simple)).Headers.Contains("Access-Control-Allow-Origin"));
    }
}
