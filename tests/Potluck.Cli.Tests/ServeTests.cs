using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Potluck.Cli.Tests;

/// <summary>`potluck serve` as users run it: real gateway and node child processes on loopback.</summary>
public sealed class ServeTests : IClassFixture<TempHome>
{
    private static readonly TimeSpan FailFast = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan ReadyLimit = TimeSpan.FromSeconds(120);
    private readonly TempHome _home;

    public ServeTests(TempHome home) => _home = home;

    [Fact]
    public async Task AMissingModelFailsFastWithOneLine()
    {
        var clock = Stopwatch.StartNew();
        var run = await PotluckProcess.RunAsync(_home.Path, FailFast, "serve", "--model", _home.File("missing.gguf"), "--port", FreePort().ToString());
        Assert.True(run.ExitCode == 3, run.ToString());
        TextAssert.OneLineError(run, "model file not found");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"took {clock.Elapsed}");
    }

    [Fact]
    public async Task ACorruptModelFailsFastWithOneLine()
    {
        var corrupt = _home.File("corrupt.gguf");
        var bytes = new byte[256 * 1024];
        new Random(11).NextBytes(bytes);
        await File.WriteAllBytesAsync(corrupt, bytes);
        var run = await PotluckProcess.RunAsync(_home.Path, FailFast, "serve", "--model", corrupt, "--port", FreePort().ToString());
        Assert.True(run.ExitCode == 3, run.ToString());
        TextAssert.OneLineError(run, "cannot read model");
    }

    [Fact]
    public async Task APortInUseFailsBeforeStartingChildren()
    {
        using var holder = new TcpListener(IPAddress.Loopback, 0);
        holder.Start();
        var port = ((IPEndPoint)holder.LocalEndpoint).Port;
        var run = await PotluckProcess.RunAsync(_home.Path, ReadyLimit, "serve", "--port", port.ToString());
        Assert.True(run.ExitCode == 1, run.ToString());
        TextAssert.OneLineError(run, $"port {port}");
    }

    [Fact]
    public async Task KillingOneNodeSparesTheRestAndSigintLeavesNoChildBehind()
    {
        await using var serve = await RunningServe.StartAsync(_home.Path, ["--nodes", "2"], ReadyLimit);
        var children = serve.ChildPids();
        Assert.Equal(3, children.Count); // gateway + 2 nodes
        // A streamed chat through the whole route (gateway -> node-1 -> node-2 -> gateway). Greedy, and /reset drops
        // the history, so asking the same thing twice must stream the same reply twice (each followed by a newline).
        var chat = await PotluckProcess.RunWithInputAsync(_home.Path, TimeSpan.FromSeconds(60), "Hello\n/reset\nHello\n",
            "chat", "--url", serve.Url.ToString(), "--max-tokens", "6", "--temperature", "0");
        Assert.True(chat.ExitCode == 0, chat.ToString());
        var half = chat.Stdout.Length / 2;
        Assert.True(chat.Stdout.Length > 2 && chat.Stdout.Length % 2 == 0, chat.ToString());
        Assert.Equal(chat.Stdout[..half], chat.Stdout[half..]);

        var node1 = serve.PidOf("node-1");
        var survivors = children.Where(pid => pid != node1).ToList();

        Signal(node1, "KILL");
        await serve.WaitForLineAsync("[serve] node-1 exited", TimeSpan.FromSeconds(20));
        await Task.Delay(TimeSpan.FromSeconds(2));
        Assert.All(survivors, pid => Assert.True(ProcessSupervisorTests.ProcessAlive(pid), $"pid {pid} died with node-1\n{serve.Output}"));
        Assert.False(serve.HasExited);
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) })
        {
            // The gateway still answers HTTP (whether it reports ready depends on replicas, not on this test).
            using var response = await http.GetAsync(new Uri(serve.Url, "v1/models"));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }

        Signal(serve.Pid, "INT");
        var code = await serve.WaitForExitAsync(TimeSpan.FromSeconds(40));
        Assert.True(code == 0, $"serve exited {code}\n{serve.Output}");
        Assert.All(children, pid => Assert.False(ProcessSupervisorTests.ProcessAlive(pid), $"pid {pid} outlived serve\n{serve.Output}"));
    }

    [Fact]
    public async Task ChildrenExitWhenServeIsKilledOutright()
    {
        await using var serve = await RunningServe.StartAsync(_home.Path, ["--nodes", "1"], ReadyLimit);
        var children = serve.ChildPids();
        Assert.Equal(2, children.Count);

        Signal(serve.Pid, "KILL");
        var clock = Stopwatch.StartNew();
        while (children.Any(ProcessSupervisorTests.ProcessAlive))
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"children {string.Join(",", children.Where(ProcessSupervisorTests.ProcessAlive))} outlived a SIGKILLed serve");
            await Task.Delay(200);
        }
    }

    internal static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    internal static void Signal(int pid, string signal)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", ["-" + signal, pid.ToString()]) { UseShellExecute = false })!;
        if (!kill.WaitForExit(TimeSpan.FromSeconds(10))) throw new TimeoutException("kill did not return");
    }

    /// <summary>A `potluck serve` process started by a test, ready when its gateway answered /readyz.</summary>
    private sealed class RunningServe : IAsyncDisposable
    {
        private readonly Process _process;
        private readonly ConcurrentQueue<string> _lines = new();

        private RunningServe(Process process, Uri url)
        {
            _process = process;
            Url = url;
            process.OutputDataReceived += (_, e) => { if (e.Data is not null) _lines.Enqueue(e.Data); };
            process.ErrorDataReceived += (_, e) => { if (e.Data is not null) _lines.Enqueue("stderr: " + e.Data); };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
        }

        public Uri Url { get; }
        public int Pid => _process.Id;
        public bool HasExited => _process.HasExited;
        public string Output => string.Join('\n', _lines);

        public static async Task<RunningServe> StartAsync(string home, string[] arguments, TimeSpan readyLimit)
        {
            var port = FreePort();
            var process = Process.Start(PotluckProcess.StartInfo(["serve", "--port", port.ToString(), .. arguments], home))!;
            var serve = new RunningServe(process, new Uri($"http://127.0.0.1:{port}/"));
            try
            {
                await serve.WaitForLineAsync("Pool ready:", readyLimit);
                return serve;
            }
            catch
            {
                await serve.DisposeAsync();
                throw;
            }
        }

        public async Task WaitForLineAsync(string fragment, TimeSpan limit)
        {
            var clock = Stopwatch.StartNew();
            while (!_lines.Any(line => line.Contains(fragment, StringComparison.Ordinal)))
            {
                if (_process.HasExited) throw new InvalidOperationException($"serve exited ({_process.ExitCode}) before '{fragment}'\n{Output}");
                if (clock.Elapsed > limit) throw new TimeoutException($"no '{fragment}' within {limit}\n{Output}");
                await Task.Delay(100);
            }
        }

        /// <summary>The pid the pool table printed for a process name ("│ node-1  │ 1234 │ ...").</summary>
        public int PidOf(string name)
        {
            foreach (var line in _lines)
            {
                var cells = line.Split('│', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
                if (cells.Length >= 2 && cells[0] == name && int.TryParse(cells[1], out var pid)) return pid;
            }
            throw new InvalidOperationException($"no pid for {name} in\n{Output}");
        }

        /// <summary>Direct children of serve, read from /proc (the truth, not what serve claims).</summary>
        public List<int> ChildPids()
        {
            var children = new List<int>();
            foreach (var dir in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
                try
                {
                    var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                    var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                    if (int.Parse(fields[1]) == Pid && fields[0] != "Z") children.Add(pid);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
                {
                    // The process went away while we looked.
                }
            }
            return children;
        }

        public async Task<int> WaitForExitAsync(TimeSpan limit)
        {
            using var deadline = new CancellationTokenSource(limit);
            await _process.WaitForExitAsync(deadline.Token);
            return _process.ExitCode;
        }

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                // Let serve clean up its children; only then force it.
                Signal(_process.Id, "TERM");
                using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                try
                {
                    await _process.WaitForExitAsync(deadline.Token);
                }
                catch (OperationCanceledException)
                {
                    _process.Kill(entireProcessTree: true);
                }
            }
            _process.Dispose();
        }
    }
}
