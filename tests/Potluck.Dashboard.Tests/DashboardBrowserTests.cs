using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;
using Potluck.Gateway;
using Potluck.Inference.Gguf;
using Xunit.Abstractions;

namespace Potluck.Dashboard.Tests;

/// <summary>
/// The dashboard in a real browser (Debian's chromium, driven through its chromedriver by Selenium) against a real
/// pool: three node processes ([0, 2) and two replicas of [2, 4)) and an in-process gateway with an admin key. The
/// page logs in with the key, its charts move while requests stream, and a SIGKILLed replica turns red. Screenshots
/// of the three moments go to $POTLUCK_DASHBOARD_SCREENSHOTS (docs/images when refreshing the README's), else to
/// the test's output folder.
/// </summary>
[ProcessTest]
public sealed class DashboardBrowserTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string ChromeDriver = "/usr/bin/chromedriver";
    private const string Chromium = "/usr/bin/chromium";
    private const string AdminKey = "dashboard-test-admin-key-4f1c";
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);
    private static readonly TimeSpan UiTimeout = TimeSpan.FromSeconds(60);
    private const int Streams = 5;
    private const int MaxTokens = 390;
    private static readonly TimeSpan DashboardSamplerPeriod = Potluck.Gateway.Telemetry.DashboardSampler.Period;

    private readonly string _modelPath = TestModels.Small(GgmlType.Q8_0);
    private readonly List<NodeProcess> _nodes = [];
    private readonly string _profile = Path.Combine(Path.GetTempPath(), "potluck-chromium-" + Guid.NewGuid().ToString("N"));
    private GatewayApp _gateway = null!;
    private HttpClient _http = null!;
    private ChromeDriver? _browser;
    private string _model = "";

    public async Task InitializeAsync()
    {
        Assert.True(File.Exists(ChromeDriver) && File.Exists(Chromium),
            $"the dashboard test needs Debian's chromium and chromium-driver ({Chromium}, {ChromeDriver}): apt-get install chromium chromium-driver, as .ci/run does");
        try
        {
            var primarySilo = Ports.Free();
            var seed = $"127.0.0.1:{primarySilo}";
            // An 8,192-token KV budget on the front node (the default is its share of free memory: millions of tokens),
            // three quarters of it held through the control plane below.
            _nodes.Add(NodeProcess.Start(new NodeLaunch("front", _modelPath, 0, 2)
            {
                SiloPort = primarySilo,
                FastFailureDetection = true,
                Environment = new Dictionary<string, string>
                {
                    ["Logging__LogLevel__Default"] = "Warning",
                    ["Potluck__Node__KvBudgetTokens"] = "8192",
                },
            }, output));
            _nodes.Add(NodeProcess.Start(_modelPath, 2, 4, "back-a", seed, fastFailureDetection: true, output: output));
            _nodes.Add(NodeProcess.Start(_modelPath, 2, 4, "back-b", seed, fastFailureDetection: true, output: output));
            _gateway = GatewayHost.Build(new GatewayOptions
            {
                Security = TestPki.Settings(),
                ModelPath = _modelPath,
                Port = 0,
                SiloPort = Ports.Free(),
                PrimarySiloEndpoint = seed,
                FastFailureDetection = true,
                Threads = 1,
                PoolRefreshPeriod = TimeSpan.FromMilliseconds(500),
                GatewayId = "gateway-dashboard",
                StepTimeout = TimeSpan.FromSeconds(10),
                AdminKey = AdminKey,
                // Five streams at once, four admitted: one waits (the queue chart). Sessions charge KV in 64-token
                // blocks as they grow, so 6,144 tokens are held through the front node's shard grain (below): the four
                // streams (at least a block each, at most 448 tokens each) then leave it under 25% free, the KV warning.
                MaxConcurrentSessions = 4,
            }, logging => logging.SetMinimumLevel(Microsoft.Extensions.Logging.LogLevel.Warning));
            using (var timeout = new CancellationTokenSource(StartTimeout)) await _gateway.StartAsync(timeout.Token);
            _http = new HttpClient { BaseAddress = _gateway.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
            _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", AdminKey);
            await WaitForPoolAsync();
            var front = _gateway.Services.GetRequiredService<Orleans.IGrainFactory>()
                .GetGrain<Potluck.Cluster.IShardGrain>(Potluck.Cluster.ShardKeys.For("front", 0, 2));
            for (var i = 0; i < 96; i++) await front.ReserveSession($"held-{i}", 64);
            _browser = StartBrowser();
        }
        catch
        {
            // xUnit does not dispose a test class whose InitializeAsync failed.
            await DisposeAsync();
            throw;
        }
    }

    private async Task WaitForPoolAsync()
    {
        var deadline = DateTime.UtcNow + StartTimeout;
        var last = "";
        while (true)
        {
            try
            {
                using var pool = JsonDocument.Parse(await _http.GetStringAsync("api/pool"));
                last = pool.RootElement.ToString();
                _model = pool.RootElement.GetProperty("model").GetProperty("name").GetString() ?? "";
                var healthy = pool.RootElement.GetProperty("nodes").EnumerateArray().Count(n => n.GetProperty("state").GetString() == "healthy");
                if (healthy == _nodes.Count && pool.RootElement.GetProperty("coverage").GetProperty("full_chain").GetBoolean()) return;
            }
            catch (HttpRequestException e)
            {
                last = e.Message;
            }
            Assert.True(DateTime.UtcNow < deadline, $"the pool did not come up with {_nodes.Count} healthy nodes: {last}\n{NodeOutput()}");
            await Task.Delay(250);
        }
    }

    private ChromeDriver StartBrowser()
    {
        // The driver is given explicitly: Selenium Manager would try to download one (and a browser).
        var service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(ChromeDriver)!, Path.GetFileName(ChromeDriver));
        service.SuppressInitialDiagnosticInformation = true;
        service.HideCommandPromptWindow = true;
        var options = new ChromeOptions { BinaryLocation = Chromium };
        Directory.CreateDirectory(_profile);
        options.AddArguments("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--user-data-dir=" + _profile, "--window-size=1360,900", "--hide-scrollbars");
        var browser = new ChromeDriver(service, options, TimeSpan.FromSeconds(60));
        browser.Manage().Timeouts().PageLoad = TimeSpan.FromSeconds(30);
        return browser;
    }

    private ChromeDriver Browser => _browser ?? throw new InvalidOperationException("no browser");

    private string NodeOutput() => string.Join("\n", _nodes.Select(n => $"--- {n.NodeId}\n{n.Output}"));

    /// <summary>Evaluates a JavaScript expression in the page (read fresh each time: the page redraws every second).</summary>
    private string Js(string expression) => Browser.ExecuteScript($"return String({expression});") as string ?? "";

    private async Task<string> WaitForAsync(string what, Func<bool> condition, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? UiTimeout);
        while (true)
        {
            try
            {
                if (condition()) return "";
            }
            catch (WebDriverException e) when (e is StaleElementReferenceException or JavaScriptException)
            {
                // Redrawn between the lookup and the read: try again.
            }
            if (DateTime.UtcNow > deadline)
                Assert.Fail($"timed out waiting for {what}; the page says:\n{Js("document.body.innerText")}");
            await Task.Delay(250);
        }
    }

    private static string? ConfiguredScreenshots => Environment.GetEnvironmentVariable("POTLUCK_DASHBOARD_SCREENSHOTS");

    private string ScreenshotDirectory()
    {
        var configured = ConfiguredScreenshots;
        var directory = string.IsNullOrEmpty(configured) ? Path.Combine(AppContext.BaseDirectory, "screenshots")
            : Path.GetFullPath(configured, RepositoryLayout.Root);
        Directory.CreateDirectory(directory);
        return directory;
    }

    private void Screenshot(string name)
    {
        var path = Path.Combine(ScreenshotDirectory(), name);
        // The whole page: a window whose viewport is as tall as the document (the window's own frame added).
        var height = Convert.ToInt32(Browser.ExecuteScript("return document.body.scrollHeight + window.outerHeight - window.innerHeight + 24;"),
            System.Globalization.CultureInfo.InvariantCulture);
        Browser.Manage().Window.Size = new System.Drawing.Size(1360, Math.Clamp(height, 600, 3000));
        Browser.GetScreenshot().SaveAsFile(path);
        output.WriteLine($"screenshot: {path}");
    }

    private double Chart(string id, string field) =>
        double.TryParse(Js($"document.getElementById('{id}').dataset.{field}"), System.Globalization.NumberStyles.Float,
            System.Globalization.CultureInfo.InvariantCulture, out var v) ? v : double.NaN;

    private string NodeState(string node) => Js($"(document.querySelector('tr[data-node=\"{node}\"]') || {{ dataset: {{}} }}).dataset.state");

    private string NodeRowClass(string node) => Js($"(document.querySelector('tr[data-node=\"{node}\"]') || {{ className: '' }}).className");

    [Fact]
    public async Task The_dashboard_logs_in_with_the_admin_key_charts_a_stream_and_shows_a_killed_node_in_red()
    {
        // Logged out: the login form, not the dashboard.
        Browser.Navigate().GoToUrl(_gateway.BaseAddress);
        Assert.Empty(Browser.FindElements(By.Id("nodes")));
        Browser.FindElement(By.Name("key")).SendKeys(AdminKey);
        Browser.FindElement(By.CssSelector("form[action='/login'] button")).Click();
        await WaitForAsync("the dashboard after logging in", () => Browser.FindElements(By.Id("nodes")).Count == 1);

        // Idle: every node healthy, replicas grouped, the charts drawn and at zero.
        await WaitForAsync("three healthy nodes", () => _nodes.All(n => NodeState(n.NodeId) == "healthy"));
        await WaitForAsync("a few seconds of samples", () => Chart("chart-tokens", "samples") >= 3);
        Assert.Equal(0, Chart("chart-tokens", "latest"));
        // Healthy replicas per layer: [0, 2) on one node, [2, 4) on two.
        Assert.Equal("1,1,2,2", Js("document.getElementById('coverage').dataset.replicas"));
        Assert.Contains("Layers [2, 4) · 2 of 2 replicas healthy", Js("document.getElementById('nodes').innerText"));
        Assert.Contains("Ready: every layer of [0, 4) is covered", Js("document.getElementById('status').textContent"));
        Screenshot("dashboard-idle.png");

        // Streaming: five loops of requests back to back until the page has shown them (bounded: 40 requests each, 150 s).
        // Stopped between requests, so no stream is cut (a cut stream counts as an error).
        using var hardStop = new CancellationTokenSource(TimeSpan.FromSeconds(150));
        using var stop = new CancellationTokenSource();
        var streams = Task.WhenAll(Enumerable.Range(0, Streams).Select(i => Task.Run(() => StreamRequestsAsync(i, 40, stop.Token, hardStop.Token))));
        try
        {
            await WaitForAsync("tokens/s above zero while requests stream", () => Chart("chart-tokens", "latest") > 0, TimeSpan.FromSeconds(60));
            // The line itself rose off the baseline (not just the caption): some point is above the lowest one.
            Assert.Equal("true", Js("(() => { const ys = document.querySelector('#chart-tokens polyline').getAttribute('points').split(' ').map(p => +p.split(',')[1]); return Math.min(...ys) < Math.max(...ys); })()"));
            await WaitForAsync("a running session with its route", () => Js("document.getElementById('sessions').innerText").Contains("front [0, 2) → back-"));
            await WaitForAsync("a time to first token", () => Chart("chart-ttft", "max") > 0);
            await WaitForAsync("a queued request in the queue chart", () => Chart("chart-queue", "max") >= 1);
            await WaitForAsync("four running sessions", () => Js("document.querySelectorAll('#sessions tr[data-session]').length") == "4");
            await WaitForAsync("the front node's KV warning", () =>
                Js("document.querySelector('tr[data-node=\"front\"] td.kv-low, tr[data-node=\"front\"] td.kv-critical') !== null") == "true");
            if (ConfiguredScreenshots is not null)
            {
                // For the README's pictures: a minute's window with half a minute of traffic in it.
                Browser.FindElement(By.CssSelector("#window button[data-seconds='60']")).Click();
                await Task.Delay(TimeSpan.FromSeconds(30));
                await WaitForAsync("a running session", () => Js("document.getElementById('sessions').innerText").Contains("front [0, 2) → back-"));
            }
            Screenshot("dashboard-streaming.png");
        }
        finally
        {
            await stop.CancelAsync();
            var completed = await streams;
            output.WriteLine($"{completed.Sum()} streamed requests completed");
        }
        Assert.True(Chart("chart-tokens", "max") > 0);
        // Every stream ended normally: the errors chart stayed at zero.
        await Task.Delay(DashboardSamplerPeriod * 2);
        Assert.Equal(0, Chart("chart-errors", "max"));

        // A replica is SIGKILLed: its row turns red, the [2, 4) span has one healthy replica left, the event is listed.
        var victim = _nodes.Single(n => n.NodeId == "back-b");
        victim.Kill();
        await WaitForAsync("back-b red", () => NodeState("back-b") is "unhealthy" or "failed" && NodeRowClass("back-b").Contains("state-bad"), TimeSpan.FromSeconds(90));
        Assert.Equal("healthy", NodeState("back-a"));
        Assert.Equal("healthy", NodeState("front"));
        await WaitForAsync("one healthy replica of [2, 4)", () => Js("document.getElementById('coverage').dataset.replicas") == "1,1,1,1");
        await WaitForAsync("the failure in the event list", () =>
            Js("[...document.querySelectorAll('#events li')].filter(li => ['failed', 'removed'].includes(li.dataset.kind)).map(li => li.innerText).join('\\n')").Contains("back-b [2, 4)"));
        Screenshot("dashboard-node-down.png");
    }

    /// <summary>
    /// Streams completions one after another until <paramref name="stop"/> (checked between requests),
    /// <paramref name="ct"/> (cuts one) or <paramref name="max"/>; returns how many finished.
    /// </summary>
    private async Task<int> StreamRequestsAsync(int stream, int max, CancellationToken stop, CancellationToken ct)
    {
        var done = 0;
        try
        {
            for (var i = 0; i < max && !stop.IsCancellationRequested; i++)
            {
                var body = JsonSerializer.Serialize(new { model = _model, prompt = "Shared dinners", max_tokens = MaxTokens, ignore_eos = true, stream = true, seed = stream * 1000 + i });
                using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
                using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
                Assert.True(response.IsSuccessStatusCode, $"HTTP {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync(ct)}");
                using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct));
                while (await reader.ReadLineAsync(ct) is { } line)
                    if (line == "data: [DONE]") break;
                done++;
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
        }
        return done;
    }

    public async Task DisposeAsync()
    {
        try
        {
            _browser?.Quit();
        }
        catch (WebDriverException e)
        {
            output.WriteLine($"chromium did not quit cleanly: {e.Message}");
        }
        _browser?.Dispose();
        _http?.Dispose();
        if (_gateway is not null) await _gateway.DisposeAsync();
        foreach (var node in _nodes) await node.DisposeAsync();
        try
        {
            if (Directory.Exists(_profile)) Directory.Delete(_profile, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
