using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Potluck.Cli.Tests;

/// <summary>`potluck serve` as users run it: real gateway and node child processes on loopback.</summary>
[ProcessTest]
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
        var run = await PotluckProcess.RunAsync(_home.Path, FailFast, "serve", "--model", _home.File("missing.gguf"), "--port", Ports.Free().ToString());
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
        var run = await PotluckProcess.RunAsync(_home.Path, FailFast, "serve", "--model", corrupt, "--port", Ports.Free().ToString());
        Assert.True(run.ExitCode == 3, run.ToString());
        TextAssert.OneLineError(run, "cannot read model");
    }

    [Fact]
    public async Task AnUnsupportedArchitectureFailsFastWithOneLineNamingItAndTheSupportedOnes()
    {
        var path = _home.File("gpt2.gguf");
        new Potluck.Inference.Models.GgufWriter()
            .Add("general.architecture", "gpt2")
            .Add("gpt2.block_count", 2u)
            .AddTensor("token_embd.weight", [8, 4], d => d.Fill(0.1f))
            .WriteTo(path);
        var run = await PotluckProcess.RunAsync(_home.Path, FailFast, "serve", "--model", path, "--port", Ports.Free().ToString());
        Assert.True(run.ExitCode == 3, run.ToString());
        TextAssert.OneLineError(run, "unsupported architecture 'gpt2'; supported: " + string.Join(", ", Potluck.Inference.Families.ModelFamilies.Supported));
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
        await using var serve = await ServeProcess.StartAsync(_home.Path, ["--nodes", "2"], ReadyLimit);
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

        ChildProcess.Signal(node1, ProcessSignal.Kill);
        await serve.WaitForOutputAsync("[serve] node-1 exited", TimeSpan.FromSeconds(20));
        await Task.Delay(TimeSpan.FromSeconds(2));
        Assert.All(survivors, pid => Assert.True(ProcessSupervisorTests.ProcessAlive(pid), $"pid {pid} died with node-1\n{serve.Output}"));
        Assert.False(serve.HasExited);
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) })
        {
            // The gateway still answers HTTP (whether it reports ready depends on replicas, not on this test).
            using var response = await http.GetAsync(new Uri(serve.Url, "v1/models"));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }

        serve.Signal(ProcessSignal.Interrupt);
        var code = await serve.WaitForExitAsync(TimeSpan.FromSeconds(40));
        // Ctrl+C: 130 even after a clean stop (docs/cli.md).
        Assert.True(code == 130, $"serve exited {code}\n{serve.Output}");
        Assert.All(children, pid => Assert.False(ProcessSupervisorTests.ProcessAlive(pid), $"pid {pid} outlived serve\n{serve.Output}"));
    }

    [Fact]
    public async Task ChildrenExitWhenServeIsKilledOutright()
    {
        await using var serve = await ServeProcess.StartAsync(_home.Path, ["--nodes", "1"], ReadyLimit);
        var children = serve.ChildPids();
        Assert.Equal(2, children.Count);

        serve.Signal(ProcessSignal.Kill);
        var clock = Stopwatch.StartNew();
        while (children.Any(ProcessSupervisorTests.ProcessAlive))
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"children {string.Join(",", children.Where(ProcessSupervisorTests.ProcessAlive))} outlived a SIGKILLed serve");
            await Task.Delay(200);
        }
    }

    /// <summary>Kept for the CLI tests that call it: the shared <see cref="Ports.Free"/>.</summary>
}
