using System.Collections.Concurrent;
using System.Diagnostics;
using Potluck.Protocol.V1;
using Xunit.Abstractions;
using GrpcStage = Potluck.Protocol.V1.Stage;

namespace Potluck.Node.Tests;

/// <summary>A real node process (tests/Potluck.Node.TestHost), its output mirrored to the test log and kept for assertions.</summary>
public sealed class NodeProcess : IDisposable
{
    private readonly ConcurrentQueue<string> _stderr = new();

    private NodeProcess(Process process, string nodeId, string endpoint)
    {
        Process = process;
        NodeId = nodeId;
        Endpoint = endpoint;
    }

    public Process Process { get; }
    public string NodeId { get; }

    /// <summary>The node's gRPC endpoint (http://127.0.0.1:port).</summary>
    public string Endpoint { get; }

    public IReadOnlyCollection<string> StandardErrorLines => _stderr;

    public static string TestHostDll()
    {
        // tests/Potluck.Node.Tests/bin/<Config>/net10.0/ → tests/Potluck.Node.TestHost/bin/<Config>/net10.0/
        var baseDir = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd('/'));
        var config = baseDir.Parent!.Name;
        var dll = Path.GetFullPath(Path.Combine(baseDir.FullName, "../../../../Potluck.Node.TestHost/bin", config, baseDir.Name, "Potluck.Node.TestHost.dll"));
        Assert.True(File.Exists(dll), $"build the test host first: {dll}");
        return dll;
    }

    /// <param name="environment">Extra variables for the child, e.g. Potluck__Node__ModelPath (the container way to configure a node).</param>
    public static NodeProcess Start(ITestOutputHelper output, string nodeId, int grpcPort, IEnumerable<string> args,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add("exec");
        info.ArgumentList.Add(TestHostDll());
        foreach (var arg in args) info.ArgumentList.Add(arg);
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) info.Environment[key] = value;
        var process = Process.Start(info)!;
        var node = new NodeProcess(process, nodeId, $"http://127.0.0.1:{grpcPort}");
        process.OutputDataReceived += (_, e) => node.Log(output, e.Data, stderr: false);
        process.ErrorDataReceived += (_, e) => node.Log(output, e.Data, stderr: true);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return node;
    }

    private void Log(ITestOutputHelper output, string? line, bool stderr)
    {
        if (line is null) return;
        if (stderr) _stderr.Enqueue(line);
        // The test may have finished while the process still writes.
        try { output.WriteLine($"[{NodeId}{(stderr ? "!" : "")}] {line}"); } catch (InvalidOperationException) { }
    }

    /// <summary>Waits until the Stage service answers Describe; fails if the process exits first.</summary>
    public async Task WaitServingAsync(TimeSpan timeout)
    {
        using var channel = Channels.For(Endpoint);
        var client = new GrpcStage.StageClient(channel);
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            Assert.False(Process.HasExited, $"{NodeId} exited with {(Process.HasExited ? Process.ExitCode : 0)}: {string.Join(" | ", _stderr)}");
            try
            {
                await client.DescribeAsync(new DescribeRequest(), deadline: DateTime.UtcNow.AddSeconds(2));
                return;
            }
            catch (Grpc.Core.RpcException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(200);
            }
        }
    }

    /// <summary>Waits for the process to exit on its own and returns its exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var limit = new CancellationTokenSource(timeout);
        try
        {
            await Process.WaitForExitAsync(limit.Token);
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"{NodeId} still running after {timeout.TotalSeconds:F0} s; stderr: {string.Join(" | ", _stderr)}");
        }
        return Process.ExitCode;
    }

    public void Dispose()
    {
        if (!Process.HasExited) Process.Kill(entireProcessTree: true);
        Process.Dispose();
    }
}
