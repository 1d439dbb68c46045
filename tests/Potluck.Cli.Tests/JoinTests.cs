using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;

namespace Potluck.Cli.Tests;

/// <summary>Two generated models (Q8_0 and F16: same shape, different files, so different model ids).</summary>
public sealed class JoinModels : IAsyncLifetime
{
    public TempHome Home { get; } = new();
    public string Pool => Home.File("pool.gguf");
    public string Other => Home.File("other.gguf");

    public async Task InitializeAsync()
    {
        foreach (var (type, path) in new[] { ("Q8_0", Pool), ("F16", Other) })
        {
            var run = await PotluckProcess.RunAsync(Home.Path, TimeSpan.FromSeconds(120), "model", "create-demo", "--type", type, "--output", path);
            Assert.True(run.ExitCode == 0, run.ToString());
        }
    }

    public Task DisposeAsync()
    {
        Home.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary>
/// `potluck node --join URL` against a real gateway process: the node reads the pool, checks the model and picks
/// the layers nobody holds; nodes with another model file are refused, and the gateway flags them.
/// </summary>
[ProcessTest]
public sealed class JoinTests : IClassFixture<JoinModels>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(90);
    private readonly JoinModels _models;

    public JoinTests(JoinModels models) => _models = models;

    [Fact]
    public async Task ANodeWithoutLayersTakesTheMissingSpanAndTheFileMustMatch()
    {
        await using var gateway = GatewayProcess.Start(_models.Home.Path, _models.Pool);
        var url = gateway.Url;
        var seed = gateway.Seed;
        using var http = gateway.CreateMemberClient();
        await WaitUntilAsync(http, "healthz", _ => true, Limit, gateway);

        await using var first = PotluckProcess.Start(_models.Home.Path, "node", "--model", _models.Pool, "--layers", "0:3", "--join", seed,
            "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(), "--threads", "1");
        // The join document lists the first node once its shard reached the gateway's pool view.
        await WaitUntilAsync(http, "api/pool/join", body => body.Contains("\"end\":3", StringComparison.Ordinal), Limit, first);

        // Default id and ports: this machine's name and a number, and free ports.
        await using var second = PotluckProcess.Start(_models.Home.Path, "node", "--model", _models.Pool, "--join", url, "--threads", "1");
        var ready = await WaitUntilAsync(http, "readyz", _ => true, Limit, second);
        Assert.Matches($@"{System.Text.RegularExpressions.Regex.Escape(Potluck.Node.Hosting.NodeIdClaim.BaseName(Environment.MachineName))}-\d+ \[3, 8\)", ready);
        Assert.Contains("chose layers [3, 8)", second.Output);

        // The chosen span serves: a completion runs through both nodes.
        var served = JsonDocument.Parse(await http.GetStringAsync("api/join")).RootElement.GetProperty("model");
        var poolModelId = served.GetProperty("id").GetString()!;
        var request = JsonSerializer.Serialize(new
        {
            model = served.GetProperty("name").GetString(),
            messages = new[] { new { role = "user", content = "Hello" } },
            max_tokens = 4,
            temperature = 0,
            ignore_eos = true,
        });
        using (var content = new StringContent(request, Encoding.UTF8, "application/json"))
        using (var response = await http.PostAsync("v1/chat/completions", content))
        {
            var body = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.OK, body);
            using var json = JsonDocument.Parse(body);
            Assert.Equal(4, json.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        }

        // Another file, by URL: refused before anything loads, naming both models.
        var byUrl = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "node", "--model", _models.Other, "--join", url,
            "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString());
        // Exit 3 (cannot load the model or span): this file is not the pool's model.
        Assert.True(byUrl.ExitCode == 3, byUrl.ToString());
        TextAssert.OneLineError(byUrl, "refusing to join");
        Assert.Contains($"but the pool's gateway serves {poolModelId}", byUrl.Stderr);
        Assert.Contains(_models.Other, byUrl.Stderr);

        // Another file, by seed silo: the node joins the cluster, reads the gateway's model id from its silo metadata,
        // and leaves with one clear line (NodeHost's exit 3, passed through by the CLI; a container's healthcheck then fails).
        var bySeed = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "node", "--model", _models.Other, "--layers", "0-8", "--join", seed,
            "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(), "--threads", "1");
        Assert.True(bySeed.ExitCode == 3, bySeed.ToString());
        var refusal = bySeed.Stderr.Split('\n').Single(l => l.StartsWith("potluck node: error:", StringComparison.Ordinal));
        Assert.Contains($"but the pool's gateway serves {poolModelId}", refusal);
        Assert.Contains("refusing to join", refusal);

        // The pool is untouched: still ready through the same two nodes.
        var after = await WaitUntilAsync(http, "readyz", _ => true, Limit, gateway);
        Assert.Contains("[3, 8)", after);
    }

    [Fact]
    public async Task TheGatewayFlagsANodeOfAnotherModelOnceAndNeverRoutesToIt()
    {
        // A node of another model that was there first (it had no gateway to compare with), then a gateway joins. The
        // pool's CA exists before either (as `potluck pool init` makes it), so the node issues itself a certificate.
        var init = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "pool", "init");
        Assert.True(init.ExitCode == 0, init.ToString());
        var nodeSilo = Ports.Free();
        // The pool's CA exists before its first member (`potluck pool init`); the gateway would otherwise make it.
        TestPki.InitPool(_models.Home.Path);
        await using var stranger = PotluckProcess.Start(_models.Home.Path, "node", "--model", _models.Other, "--layers", "0-8",
            "--port", Ports.Free().ToString(), "--silo-port", nodeSilo.ToString(), "--node-id", "stranger", "--threads", "1");
        await stranger.WaitForOutputAsync("serving layers [0, 8)", Limit);

        await using var gateway = GatewayProcess.Start(_models.Home.Path, _models.Pool, ["--join", $"127.0.0.1:{nodeSilo}"]);
        using var http = gateway.CreateClient();
        var pool = await WaitUntilAsync(http, "api/pool", body => body.Contains("model-mismatch", StringComparison.Ordinal), Limit, gateway);
        using var json = JsonDocument.Parse(pool);
        var node = json.RootElement.GetProperty("nodes").EnumerateArray().Single();
        Assert.Equal("stranger", node.GetProperty("id").GetString());
        Assert.Equal("model-mismatch", node.GetProperty("state").GetString());
        Assert.False(json.RootElement.GetProperty("coverage").GetProperty("full_chain").GetBoolean());

        using (var readyz = await http.GetAsync("readyz"))
            Assert.Equal(HttpStatusCode.ServiceUnavailable, readyz.StatusCode);
        // Several refreshes later the warning has still been logged once.
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.Equal(1, CountOf(gateway.Output, "Node stranger at "));
        Assert.Contains("it is never routed to", gateway.Output);
    }

    [Fact]
    public async Task JoiningWithoutAGatewayUrlOrToNothingFailsClearly()
    {
        var noPool = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "node", "--model", _models.Pool);
        Assert.True(noPool.ExitCode == 2, noPool.ToString());
        TextAssert.OneLineError(noPool, "without --layers the node chooses its own span");

        var clock = Stopwatch.StartNew();
        var nothing = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "node", "--model", _models.Pool, "--join", $"http://127.0.0.1:{Ports.Free()}");
        // Exit 4: cannot join the pool.
        Assert.True(nothing.ExitCode == 4, nothing.ToString());
        TextAssert.OneLineError(nothing, "cannot reach the gateway");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}");

        var combined = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "node", "--model", _models.Pool, "--layers", "0-4", "--memory", "1G");
        Assert.True(combined.ExitCode == 2, combined.ToString());
        TextAssert.OneLineError(combined, "do not combine with --layers");

        var rebalanceFixed = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "node", "--model", _models.Pool, "--layers", "0-4",
            "--join", "http://127.0.0.1:1", "--rebalance");
        Assert.True(rebalanceFixed.ExitCode == 2, rebalanceFixed.ToString());
        TextAssert.OneLineError(rebalanceFixed, "leave out --layers");
        var periodAlone = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "node", "--model", _models.Pool, "--join", "http://127.0.0.1:1",
            "--rebalance-every", "5");
        Assert.True(periodAlone.ExitCode == 2, periodAlone.ToString());
        TextAssert.OneLineError(periodAlone, "--rebalance-every needs --rebalance");

        // A token that is not one, or one without a gateway URL to redeem it at: usage errors before anything is dialled.
        var token = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "node", "--model", _models.Pool, "--join", "http://127.0.0.1:1", "--token", "t");
        Assert.True(token.ExitCode == 2, token.ToString());
        TextAssert.OneLineError(token, "not a Potluck join token");
        var tokenBySeed = await PotluckProcess.RunAsync(_models.Home.Path, Limit, "node", "--model", _models.Pool, "--layers", "0-4", "--join", "127.0.0.1:1",
            "--token", "plk1_x");
        Assert.True(tokenBySeed.ExitCode == 2, tokenBySeed.ToString());
        TextAssert.OneLineError(tokenBySeed, "an invite is redeemed at the pool's gateway");
    }

    private static int CountOf(string text, string fragment)
    {
        var count = 0;
        for (var at = text.IndexOf(fragment, StringComparison.Ordinal); at >= 0; at = text.IndexOf(fragment, at + 1, StringComparison.Ordinal)) count++;
        return count;
    }

    /// <summary>Polls GET <paramref name="path"/> until it answers 200 with a body <paramref name="accept"/> takes; fails if the process dies.</summary>
    internal static async Task<string> WaitUntilAsync(HttpClient http, string path, Func<string, bool> accept, TimeSpan limit, ChildProcess watched)
    {
        var clock = Stopwatch.StartNew();
        var last = "";
        while (clock.Elapsed < limit)
        {
            if (watched.HasExited) throw new InvalidOperationException($"{watched.Name} exited ({watched.ExitCode}) while waiting for /{path}\n{watched.Output}");
            try
            {
                using var response = await http.GetAsync(path);
                last = await response.Content.ReadAsStringAsync();
                if (response.IsSuccessStatusCode && accept(last)) return last;
            }
            catch (HttpRequestException e)
            {
                last = e.Message;
            }
            await Task.Delay(250);
        }
        throw new TimeoutException($"/{path} not as expected within {limit}: {last}\n--- {watched.Name}\n{watched.Output}");
    }
}
