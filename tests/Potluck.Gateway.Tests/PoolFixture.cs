using System.Diagnostics;
using System.Text;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;
using Potluck.Protocol.V1;
using Potluck.Gateway;
using Potluck.Inference.Gguf;

namespace Potluck.Gateway.Tests;

/// <summary>One real node process (tests/Potluck.Node.TestHost) on loopback.</summary>
public sealed class NodeProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();

    private NodeProcess(Process process, string nodeId, int grpcPort, int siloPort)
    {
        _process = process;
        NodeId = nodeId;
        GrpcPort = grpcPort;
        SiloPort = siloPort;
    }

    public string NodeId { get; }
    public int GrpcPort { get; }
    public int SiloPort { get; }
    public string Endpoint => $"http://127.0.0.1:{GrpcPort}";
    public int ProcessId => _process.Id;
    public bool HasExited => _process.HasExited;
    public string Output { get { lock (_output) return _output.ToString(); } }

    public static string TestHostDll
    {
        get
        {
            // tests/Potluck.Gateway.Tests/bin/<cfg>/net10.0/ → tests/Potluck.Node.TestHost/bin/<cfg>/net10.0/
            var here = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
            var configuration = here.Parent!.Name;
            var tests = here.Parent!.Parent!.Parent!.Parent!.FullName;
            var dll = Path.Combine(tests, "Potluck.Node.TestHost", "bin", configuration, here.Name, "Potluck.Node.TestHost.dll");
            if (!File.Exists(dll)) throw new FileNotFoundException("build tests/Potluck.Node.TestHost first", dll);
            return dll;
        }
    }

    public static NodeProcess Start(string modelPath, int start, int end, string nodeId, string? seed, int? siloPort = null,
        bool fastFailureDetection = false, TimeSpan? drainTimeout = null)
    {
        var grpcPort = Ports.Free();
        var silo = siloPort ?? Ports.Free();
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { TestHostDll, "--model", modelPath, "--layers", $"{start}-{end}", "--node-id", nodeId,
                     "--grpc-port", grpcPort.ToString(), "--silo-port", silo.ToString() })
            info.ArgumentList.Add(arg);
        if (seed is not null)
        {
            info.ArgumentList.Add("--seed");
            info.ArgumentList.Add(seed);
        }
        if (fastFailureDetection) info.ArgumentList.Add("--fast");
        if (drainTimeout is { } drain) info.Environment["Potluck__Node__DrainTimeout"] = drain.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        info.Environment["Logging__LogLevel__Default"] = "Warning";
        var process = Process.Start(info) ?? throw new InvalidOperationException("could not start a node process");
        var node = new NodeProcess(process, nodeId, grpcPort, silo);
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (node._output) node._output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (node._output) node._output.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return node;
    }

    /// <summary>Live data-plane view of this node (open sessions, free KV).</summary>
    public async Task<StageDescription> DescribeAsync()
    {
        using var channel = GrpcChannel.ForAddress(Endpoint);
        return await new Stage.StageClient(channel).DescribeAsync(new DescribeRequest(), deadline: DateTime.UtcNow.AddSeconds(10));
    }

    /// <summary>SIGTERM: a graceful leave (the node drains, then exits).</summary>
    public void Terminate() => Signal("TERM");

    /// <summary>SIGSTOP: the node hangs (a frozen machine): connections stay open, nothing answers.</summary>
    public void Freeze() => Signal("STOP");

    private void Signal(string signal)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", ["-" + signal, _process.Id.ToString()]) { UseShellExecute = false })!;
        if (!kill.WaitForExit(TimeSpan.FromSeconds(10))) throw new TimeoutException("kill did not return");
    }

    /// <summary>Waits for the process to exit and returns its exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var limit = new CancellationTokenSource(timeout);
        await _process.WaitForExitAsync(limit.Token);
        return _process.ExitCode;
    }

    /// <summary>SIGKILL: a crash, no graceful shutdown.</summary>
    public void Kill()
    {
        _process.Kill();
        if (!_process.WaitForExit(TimeSpan.FromSeconds(20))) throw new TimeoutException($"{NodeId} did not die after SIGKILL");
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            try { await _process.WaitForExitAsync(timeout.Token); } catch (OperationCanceledException) { }
        }
        _process.Dispose();
    }
}

/// <summary>
/// A pool as users run it: three node processes holding layers [0,1), [1,3), [3,4) of the small test model,
/// and an in-process gateway (F32 wire, so its output is bit-identical to llama.cpp on one node).
/// </summary>
public sealed class PoolFixture : IAsyncLifetime
{
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);

    public string ModelPath { get; } = TestModels.Small(GgmlType.Q8_0);
    public List<NodeProcess> Nodes { get; } = [];
    public GatewayApp Gateway { get; private set; } = null!;
    public HttpClient Http { get; private set; } = null!;
    public string ModelName { get; private set; } = "";
    public string Seed => $"127.0.0.1:{Nodes[0].SiloPort}";

    public async Task InitializeAsync()
    {
        var spans = new[] { (0, 1), (1, 3), (3, 4) };
        var primarySilo = Ports.Free();
        string? seed = null;
        for (var i = 0; i < spans.Length; i++)
        {
            Nodes.Add(NodeProcess.Start(ModelPath, spans[i].Item1, spans[i].Item2, $"node-{i}", seed, i == 0 ? primarySilo : null));
            seed ??= $"127.0.0.1:{primarySilo}";
        }
        Gateway = await StartGatewayAsync(seed!, HiddenType.F32);
        Http = new HttpClient { BaseAddress = Gateway.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        ModelName = Gateway.Services.GetService(typeof(Head.ModelFrontEnd)) is Head.ModelFrontEnd m ? m.Name : "";
        await WaitReadyAsync(Http, StartTimeout, () => string.Join("\n", Nodes.Select(n => $"--- {n.NodeId}\n{n.Output}")));
    }

    public async Task<GatewayApp> StartGatewayAsync(string? seed, HiddenType wire)
    {
        var app = GatewayHost.Build(new GatewayOptions
        {
            ModelPath = ModelPath,
            Port = 0,
            SiloPort = Ports.Free(),
            PrimarySiloEndpoint = seed,
            WireType = wire,
            Threads = 1,
            MaxBodyBytes = 64 * 1024,
            PoolRefreshPeriod = TimeSpan.FromMilliseconds(500),
            GatewayId = $"gateway-{Guid.NewGuid():N}"[..20],
            StepTimeout = TimeSpan.FromSeconds(30),
        }, logging => logging.SetMinimumLevel(LogLevel.Warning));
        using var timeout = new CancellationTokenSource(StartTimeout);
        await app.StartAsync(timeout.Token);
        return app;
    }

    public static async Task WaitReadyAsync(HttpClient http, TimeSpan timeout, Func<string>? diagnostics = null)
    {
        var deadline = DateTime.UtcNow + timeout;
        var last = "";
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                using var response = await http.GetAsync("readyz");
                last = await response.Content.ReadAsStringAsync();
                if (response.IsSuccessStatusCode) return;
            }
            catch (HttpRequestException e)
            {
                last = e.Message;
            }
            await Task.Delay(250);
        }
        throw new TimeoutException($"the pool was not ready within {timeout}: {last}\n{diagnostics?.Invoke()}");
    }

    public async Task DisposeAsync()
    {
        Http?.Dispose();
        if (Gateway is not null) await Gateway.DisposeAsync();
        foreach (var node in Nodes) await node.DisposeAsync();
    }
}

[CollectionDefinition(Name)]
public sealed class PoolCollection : ICollectionFixture<PoolFixture>
{
    public const string Name = "pool";
}
