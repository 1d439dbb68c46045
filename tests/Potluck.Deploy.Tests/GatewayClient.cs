using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Potluck.Deploy.Tests;

/// <summary>
/// Talks to a gateway on a published loopback port: readiness, the pool view and a chat completion. With an admin key
/// the operator endpoints (/api/pool, /api/sessions) are asked with it as a bearer token.
/// </summary>
public sealed class GatewayClient(int port, string? adminKey = null) : IDisposable
{
    private readonly HttpClient _http = new() { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(60) };

    // The admin key goes as "Authorization: Bearer" on operator endpoints (the dashboard uses a cookie instead).
    private Task<string> GetAdminStringAsync(string path)
    {
        if (adminKey is null) return _http.GetStringAsync(path);
        var request = new HttpRequestMessage(HttpMethod.Get, path);
        request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", adminKey);
        return SendForStringAsync(request);
    }

    private async Task<string> SendForStringAsync(HttpRequestMessage request)
    {
        using (request)
        using (var response = await _http.SendAsync(request))
        {
            var body = await response.Content.ReadAsStringAsync();
            if (!response.IsSuccessStatusCode) throw new HttpRequestException($"{request.RequestUri}: {(int)response.StatusCode} {body}", null, response.StatusCode);
            return body;
        }
    }

    /// <summary>Polls /readyz until the pool has a full chain of layers, or fails with the last answer.</summary>
    public async Task WaitUntilReadyAsync(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        var last = "no answer";
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                using var response = await _http.GetAsync("/readyz");
                last = $"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}";
                if (response.IsSuccessStatusCode) return;
            }
            catch (HttpRequestException e)
            {
                last = e.Message;
            }
            await Task.Delay(500);
        }
        throw new TimeoutException($"gateway not ready after {timeout.TotalSeconds:0}s: {last}");
    }

    /// <summary>A greedy chat completion: the text, and the token ids the gateway's session recorded.</summary>
    public async Task<(List<int> Tokens, string Text)> ChatAsync(string userMessage, int maxTokens)
    {
        // Ask the gateway which name it serves the model under rather than assuming one.
        var models = JsonNode.Parse(await _http.GetStringAsync("/v1/models"))!;
        var modelName = models["data"]![0]!["id"]!.GetValue<string>();
        var request = new JsonObject
        {
            ["model"] = modelName,
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = userMessage }),
            ["max_tokens"] = maxTokens,
            ["temperature"] = 0,
        };
        using var response = await _http.PostAsJsonAsync("/v1/chat/completions", request);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"chat completion failed: {(int)response.StatusCode} {body}");
        var json = JsonNode.Parse(body)!;
        var text = json["choices"]![0]!["message"]!["content"]!.GetValue<string>();
        var id = json["id"]!.GetValue<string>();
        var session = JsonNode.Parse(await GetAdminStringAsync($"/api/sessions/{id}"))!;
        var tokens = session["generated_tokens"]!.AsArray().Select(t => t!.GetValue<int>()).ToList();
        return (tokens, text);
    }

    public async Task<JsonNode> PoolAsync()
    {
        var body = await GetAdminStringAsync("/api/pool");
        return JsonNode.Parse(body) ?? throw new JsonException("empty /api/pool answer");
    }

    /// <summary>The data-plane endpoints of the stages the pool view lists, by node id.</summary>
    public async Task<Dictionary<string, string>> EndpointsAsync()
    {
        var pool = await PoolAsync();
        var endpoints = new Dictionary<string, string>();
        foreach (var node in pool["nodes"]?.AsArray() ?? [])
            if (node?["id"]?.GetValue<string>() is { } id && node["endpoint"]?.GetValue<string>() is { } endpoint) endpoints[id] = endpoint;
        return endpoints;
    }

    /// <summary>The ids of the nodes the pool view lists as healthy.</summary>
    public async Task<HashSet<string>> HealthyNodeIdsAsync()
    {
        var pool = await PoolAsync();
        var ids = new HashSet<string>();
        foreach (var node in pool["nodes"]?.AsArray() ?? [])
        {
            if (node?["state"]?.GetValue<string>() == "healthy" && node["id"]?.GetValue<string>() is { } id) ids.Add(id);
        }
        return ids;
    }

    public void Dispose() => _http.Dispose();
}
