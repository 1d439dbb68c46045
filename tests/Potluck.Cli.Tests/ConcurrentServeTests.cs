using System.Net;
using System.Text;
using System.Text.Json;
using Xunit.Abstractions;

namespace Potluck.Cli.Tests;

/// <summary>
/// Many users at once against the default `potluck serve`, as SDKs call it: chat requests without max_tokens (each
/// may grow to the whole context). Stages charge KV block by block as sessions grow, so none is refused for
/// room it never uses, and the gateway runs them side by side rather than one after another.
/// </summary>
[ProcessTest]
public sealed class ConcurrentServeTests(ITestOutputHelper output)
{
    private const int Requests = 20;
    private static readonly TimeSpan ReadyLimit = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task Twenty_chats_without_max_tokens_all_complete_side_by_side()
    {
        using var home = new TempHome();
        await using var serve = await ServeProcess.StartAsync(home.Path, [], ReadyLimit, output);
        using var http = new HttpClient { BaseAddress = serve.Url, Timeout = TimeSpan.FromSeconds(300) };
        using var models = JsonDocument.Parse(await http.GetStringAsync("v1/models"));
        var model = models.RootElement.GetProperty("data")[0].GetProperty("id").GetString();

        // All at once: none may wait for another to finish before it starts.
        using var start = new SemaphoreSlim(0);
        var calls = Enumerable.Range(0, Requests).Select(async i =>
        {
            await start.WaitAsync();
            var body = JsonSerializer.Serialize(new
            {
                model,
                messages = new[] { new { role = "user", content = $"Tell me about soup number {i}." } },
                temperature = 0.8,
                seed = i,
            });
            using var response = await http.PostAsync("v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"));
            return (response.StatusCode, Text: await response.Content.ReadAsStringAsync());
        }).ToList();
        start.Release(Requests);
        var results = await Task.WhenAll(calls);

        foreach (var (status, text) in results)
        {
            Assert.True(status == HttpStatusCode.OK, $"{(int)status}: {text}");
            using var json = JsonDocument.Parse(text);
            var choice = json.RootElement.GetProperty("choices")[0];
            Assert.Contains(choice.GetProperty("finish_reason").GetString(), new[] { "stop", "length" });
            Assert.True(json.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32() > 0, text);
        }
        using var pool = JsonDocument.Parse(await http.GetStringAsync("api/pool"));
        var peak = pool.RootElement.GetProperty("gateway").GetProperty("peak_active_sessions").GetInt64();
        output.WriteLine($"peak of open sessions: {peak}");
        Assert.True(peak >= 8, $"at most {peak} generations ran at once");
    }
}
