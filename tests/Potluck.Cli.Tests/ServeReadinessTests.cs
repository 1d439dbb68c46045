using System.Text.Json;
using Xunit.Abstractions;

namespace Potluck.Cli.Tests;

/// <summary>
/// `potluck serve --nodes 4 --replicas 2` prints "Pool ready" only once every node it started serves: one chain of
/// spans is not enough (a node killed while its replica still loads would lose its streams). Each node is reported as
/// it starts serving, and /readyz then counts two replicas for each span.
/// </summary>
[ProcessTest]
public sealed class ServeReadinessTests(TempHome home, ITestOutputHelper output) : IClassFixture<TempHome>
{
    [Fact]
    public async Task Serve_with_replicas_is_ready_only_when_every_node_serves()
    {
        await using var serve = await ServeProcess.StartAsync(home.Path, ["--nodes", "4", "--replicas", "2", "--ready-timeout", "280"],
            TimeSpan.FromSeconds(300), output);
        var lines = serve.Lines.ToList();
        var readyAt = lines.FindIndex(line => line.StartsWith("Pool ready:", StringComparison.Ordinal));
        Assert.True(readyAt >= 0, serve.Output);
        Assert.Contains("4 of 4 nodes serving, 2 per span", lines[readyAt]);
        // Every node was reported serving, before the pool was called ready.
        for (var i = 1; i <= 4; i++)
        {
            var name = $"node-{i}";
            var at = lines.FindIndex(line => line.StartsWith($"[serve] {name} serves [", StringComparison.Ordinal));
            Assert.True(at >= 0 && at < readyAt, $"no '{name} serves' line before 'Pool ready'\n{serve.Output}");
        }

        using var http = new HttpClient { BaseAddress = serve.Url, Timeout = TimeSpan.FromSeconds(10) };
        using var readyz = JsonDocument.Parse(await http.GetStringAsync("readyz"));
        output.WriteLine(readyz.RootElement.GetRawText());
        Assert.Equal(4, readyz.RootElement.GetProperty("serving_nodes").GetInt32());
        var spans = readyz.RootElement.GetProperty("spans").EnumerateArray().ToList();
        // serve's default model is the trained demo model: 4 layers, split in two spans.
        Assert.Equal(["[0, 2)", "[2, 4)"], spans.Select(s => s.GetProperty("layers").GetString()));
        Assert.All(spans, span => Assert.Equal(2, span.GetProperty("replicas").GetInt32()));
    }
}
