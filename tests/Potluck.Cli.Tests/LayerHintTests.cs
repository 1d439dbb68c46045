using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Potluck.Cli.Tests;

/// <summary>
/// One layer notation: a pool with a hole says which layers are missing as "[3, 6)" and hints `--layers 3:6`; that
/// hint, pasted as given onto a node command, fills exactly the hole. Real gateway and node processes on loopback.
/// </summary>
[ProcessTest]
public sealed partial class LayerHintTests(JoinModels models, ITestOutputHelper output) : IClassFixture<JoinModels>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task The_missing_layers_hint_pasted_as_given_fills_exactly_the_gap()
    {
        var home = models.Home.Path;
        await using var gateway = GatewayProcess.Start(home, models.Pool);
        using var http = gateway.CreateClient(TimeSpan.FromSeconds(10));
        await JoinTests.WaitUntilAsync(http, "healthz", _ => true, Limit, gateway);
        ChildProcess Node(params string[] layers) => PotluckProcess.Start(home, ["node", "--model", models.Pool, "--join", gateway.Seed, "--threads", "1", .. layers]);
        await using var front = Node("--layers", "0:3");
        await using var back = Node("--layers", "6:8");

        var notReady = await WaitForGapAsync(http, front, back);
        output.WriteLine(notReady);
        string reason, hint;
        using (var json = JsonDocument.Parse(notReady))
        {
            reason = json.RootElement.GetProperty("reason").GetString()!;
            var gap = Assert.Single(json.RootElement.GetProperty("missing_layers").EnumerateArray());
            Assert.Equal("[3, 6)", gap.GetProperty("layers").GetString());
            hint = gap.GetProperty("hint").GetString()!;
        }
        Assert.Contains("layers [3, 6) ", reason);
        // The inclusive reading of old ("layers 3-5") is gone, and the hint in the sentence is the one in the field.
        Assert.DoesNotContain("3-5", reason);
        var inReason = Hint().Match(reason);
        Assert.True(inReason.Success, reason);
        Assert.Equal(hint, inReason.Value);

        // Pasted as given.
        await using var filler = Node(hint.Split(' '));
        var ready = await JoinTests.WaitUntilAsync(http, "readyz", _ => true, Limit, filler);
        output.WriteLine(ready);
        using var pool = JsonDocument.Parse(await http.GetStringAsync("api/pool"));
        var spans = pool.RootElement.GetProperty("nodes").EnumerateArray()
            .Select(n => (n.GetProperty("span").GetProperty("start").GetInt32(), n.GetProperty("span").GetProperty("end").GetInt32()))
            .Order().ToList();
        Assert.Equal([(0, 3), (3, 6), (6, 8)], spans);
        Assert.Empty(pool.RootElement.GetProperty("coverage").GetProperty("gaps").EnumerateArray());
    }

    private static async Task<string> WaitForGapAsync(HttpClient http, ChildProcess front, ChildProcess back)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var last = "";
        while (clock.Elapsed < Limit)
        {
            if (front.HasExited || back.HasExited) throw new InvalidOperationException($"a node exited\n{front.Output}\n{back.Output}");
            using var response = await http.GetAsync("readyz");
            last = await response.Content.ReadAsStringAsync();
            // Both nodes serve, so the one gap left is [3, 6).
            if ((int)response.StatusCode == 503 && SecondNodeTests.ServingNodes(last) == 2) return last;
            await Task.Delay(250);
        }
        throw new TimeoutException($"/readyz never showed the two nodes and the gap: {last}");
    }

    [GeneratedRegex(@"--layers \d+:\d+")]
    private static partial Regex Hint();
}
