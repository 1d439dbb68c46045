using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using Xunit.Abstractions;

namespace Potluck.Cli.Tests;

/// <summary>
/// The gateway's access flags through the real executable: the safe default (no keys off loopback refuses to start),
/// --insecure (starts, warns), bad key flags (exit 2), and `serve` handing keys to its gateway child through the
/// environment so they never show on a command line.
/// </summary>
[ProcessTest]
public sealed class AccessCommandTests(DemoModel model, ITestOutputHelper output) : IClassFixture<DemoModel>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(90);

    private Task<PotluckRun> Gateway(params string[] arguments) => PotluckProcess.RunAsync(model.Home.Path, Limit,
        ["gateway", "--model", model.Path, "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(), .. arguments]);

    [Fact]
    public async Task A_non_loopback_api_without_keys_refuses_to_start_with_one_line()
    {
        var clock = Stopwatch.StartNew();
        var run = await Gateway("--listen", "0.0.0.0");
        Assert.True(run.ExitCode == 2, run.ToString());
        TextAssert.OneLineError(run, "without API keys");
        Assert.Contains("--insecure", run.Stderr);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}");

        // The same rule from the environment.
        var start = PotluckProcess.StartInfo(["gateway", "--model", model.Path, "--port", Ports.Free().ToString()], model.Home.Path);
        start.Environment["Potluck__Gateway__ListenAddress"] = "0.0.0.0";
        var fromEnvironment = await ChildProcess.RunAsync(start, Limit);
        Assert.True(fromEnvironment.ExitCode == 2, fromEnvironment.StandardError);
        Assert.Contains("without API keys", fromEnvironment.StandardError);
    }

    [Fact]
    public async Task Bad_access_flags_are_usage_errors()
    {
        TextAssert.OneLineError(Assert2(await Gateway("--api-key", "short")), "at least 8 characters");
        TextAssert.OneLineError(Assert2(await Gateway("--tls-cert", model.Home.File("cert.pem"))), "--tls-key");
        TextAssert.OneLineError(Assert2(await Gateway("--api-keys-file", model.Home.File("none.txt"))), "--api-keys-file");
        TextAssert.OneLineError(Assert2(await Gateway("--cors-origin", "*")), "CORS origin");
        TextAssert.OneLineError(Assert2(await Gateway("--rate-limit", "-1")), "--rate-limit");
        TextAssert.OneLineError(Assert2(await PotluckProcess.RunAsync(model.Home.Path, Limit, "serve", "--model", model.Path, "--listen", "0.0.0.0",
            "--port", Ports.Free().ToString())), "without API keys");
    }

    private static PotluckRun Assert2(PotluckRun run)
    {
        Assert.True(run.ExitCode == 2, run.ToString());
        return run;
    }

    [Fact]
    public async Task Insecure_starts_on_a_non_loopback_address_and_warns()
    {
        // Binds every interface on a free port for a few seconds; the test itself talks over loopback only.
        var port = Ports.Free();
        await using var gateway = PotluckProcess.Start(model.Home.Path,
            ["gateway", "--model", model.Path, "--listen", "0.0.0.0", "--port", port.ToString(), "--silo-listen", "127.0.0.1", "--silo-port", Ports.Free().ToString(), "--insecure"],
            output);
        await gateway.WaitForOutputAsync("--insecure: the OpenAI API on 0.0.0.0 takes requests without a key", Limit);
        await gateway.WaitForPortAsync(port, Limit);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/"), Timeout = TimeSpan.FromSeconds(10) };
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("v1/models")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("api/pool")).StatusCode);
    }

    [Fact]
    public async Task Serve_passes_keys_to_its_gateway_through_the_environment_and_the_api_needs_them()
    {
        const string key = "serve-api-key-000001";
        const string admin = "serve-admin-key-0001";
        await using var serve = await ServeProcess.StartAsync(model.Home.Path,
            ["--model", model.Path, "--nodes", "1", "--api-key", key, "--admin-key", admin], TimeSpan.FromSeconds(180), output);
        var gatewayPid = serve.PidOf("gateway");
        var commandLine = (await File.ReadAllTextAsync($"/proc/{gatewayPid}/cmdline")).Replace('\0', ' ');
        Assert.Contains("gateway", commandLine);
        Assert.DoesNotContain(key, commandLine);
        Assert.DoesNotContain(admin, commandLine);
        Assert.DoesNotContain(key, serve.Output); // nor in what serve prints
        Assert.Contains("Authorization: Bearer $POTLUCK_API_KEY", serve.Output);

        using var http = new HttpClient { BaseAddress = serve.Url, Timeout = TimeSpan.FromSeconds(30) };
        Assert.Equal(HttpStatusCode.Unauthorized, (await http.GetAsync("v1/models")).StatusCode);
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent("""{"model":"x","messages":[{"role":"user","content":"hi"}],"max_tokens":2}""", System.Text.Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        using var chat = await http.SendAsync(request);
        // Past access control: the model name is wrong, which only the endpoint itself can say.
        Assert.Equal(HttpStatusCode.NotFound, chat.StatusCode);
        using var pool = new HttpRequestMessage(HttpMethod.Get, "api/pool");
        pool.Headers.Add("x-api-key", key);
        Assert.Equal(HttpStatusCode.Forbidden, (await http.SendAsync(pool)).StatusCode);
        using var asAdmin = new HttpRequestMessage(HttpMethod.Get, "api/pool");
        asAdmin.Headers.Add("x-api-key", admin);
        Assert.Equal(HttpStatusCode.OK, (await http.SendAsync(asAdmin)).StatusCode);
    }
}
