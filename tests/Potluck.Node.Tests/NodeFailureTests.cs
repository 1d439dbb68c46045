using System.Diagnostics;
using Potluck.Inference.Gguf;
using Xunit.Abstractions;

namespace Potluck.Node.Tests;

/// <summary>
/// A node that cannot work (no model, a corrupt model, bad settings, no Redis) must say why in one error line
/// and exit non-zero promptly, so a restart loop in compose or Kubernetes is never silent.
/// </summary>
[ProcessTest]
public sealed class NodeFailureTests(ITestOutputHelper output)
{
    // Generous for a loaded 2-core machine; each case exits within a few seconds.
    private static readonly TimeSpan ExitTimeout = TimeSpan.FromSeconds(45);

    private async Task<(int Code, string ErrorLine, TimeSpan Elapsed)> RunToExitAsync(string name, Dictionary<string, string> environment)
    {
        environment.TryAdd("Potluck__Node__NodeId", name);
        environment.TryAdd("Potluck__Node__SiloPort", $"{Ports.Free()}");
        environment.TryAdd("Potluck__Node__ClusterId", $"fail-{Guid.NewGuid():N}");
        var grpcPort = Ports.Free();
        environment.TryAdd("Potluck__Node__GrpcPort", $"{grpcPort}");
        var watch = Stopwatch.StartNew();
        using var node = NodeProcess.StartFromEnvironment(output, name, grpcPort, environment);
        var code = await node.WaitForExitAsync(ExitTimeout);
        var elapsed = watch.Elapsed;
        var errors = node.StandardErrorLines.Where(l => l.StartsWith("potluck node: error:", StringComparison.Ordinal)).ToList();
        Assert.True(errors.Count == 1, $"expected exactly one 'potluck node: error:' line, got {errors.Count}: {string.Join(" | ", node.StandardErrorLines)}");
        Assert.DoesNotContain(node.StandardErrorLines, l => l.StartsWith("Unhandled exception", StringComparison.Ordinal));
        output.WriteLine($"exit {code} after {elapsed.TotalSeconds:F1} s: {errors[0]}");
        return (code, errors[0], elapsed);
    }

    [Fact]
    public async Task Missing_model_file_is_one_error_line_and_exit_2()
    {
        var missing = Path.Combine(Path.GetTempPath(), $"potluck-missing-{Guid.NewGuid():N}.gguf");
        var (code, line, _) = await RunToExitAsync("missing", new()
        {
            ["Potluck__Node__ModelPath"] = missing,
            ["Potluck__Node__Layers"] = "0-2",
        });
        Assert.Equal(NodeHost.ExitCannotLoad, code);
        Assert.Contains(missing, line);
        Assert.Contains("cannot load layers [0, 2)", line);
    }

    [Fact]
    public async Task Corrupt_model_file_is_one_error_line_and_exit_2()
    {
        var corrupt = Path.Combine(Path.GetTempPath(), $"potluck-corrupt-{Guid.NewGuid():N}.gguf");
        // A real model's first 4 KiB: a valid magic and header start, then the file just ends.
        var good = TestModels.Small(GgmlType.Q8_0);
        var head = new byte[4096];
        using (var source = File.OpenRead(good)) source.ReadExactly(head);
        await File.WriteAllBytesAsync(corrupt, head);
        try
        {
            var (code, line, _) = await RunToExitAsync("corrupt", new()
            {
                ["Potluck__Node__ModelPath"] = corrupt,
                ["Potluck__Node__Layers"] = "0-2",
            });
            Assert.Equal(NodeHost.ExitCannotLoad, code);
            Assert.Contains(corrupt, line);
        }
        finally
        {
            File.Delete(corrupt);
        }
    }

    [Fact]
    public async Task Invalid_layer_setting_names_the_environment_variable()
    {
        var (code, line, _) = await RunToExitAsync("badlayers", new()
        {
            ["Potluck__Node__ModelPath"] = TestModels.Small(GgmlType.Q8_0),
            ["Potluck__Node__Layers"] = "3-1",
        });
        // A bad setting is a usage error (exit 2) in the one exit-code table.
        Assert.Equal(Potluck.Hosting.ExitCodes.Usage, code);
        Assert.Contains("Potluck__Node__Layers", line);
        Assert.Contains("'3-1'", line);
    }

    [Fact]
    public async Task Unreachable_redis_is_one_error_line_and_exit_3()
    {
        // A loopback port nobody listens on: connection refused, as when the Redis service is down.
        var deadRedis = $"127.0.0.1:{Ports.Free()}";
        var (code, line, elapsed) = await RunToExitAsync("noredis", new()
        {
            ["Potluck__Node__ModelPath"] = TestModels.Small(GgmlType.Q8_0),
            ["Potluck__Node__Layers"] = "0-2",
            // Options after the endpoint (a password here) must never reach the log line.
            ["Potluck__Node__RedisConnectionString"] = $"{deadRedis},connectTimeout=1000,password=hunter2",
        });
        Assert.Equal(NodeHost.ExitCannotJoin, code);
        Assert.Contains($"Redis membership at {deadRedis}:", line);
        Assert.DoesNotContain("hunter2", line);
        Assert.True(elapsed < ExitTimeout);
    }

    [Fact]
    public async Task Unreachable_seed_gives_up_after_the_startup_timeout_with_exit_3()
    {
        var deadSeed = $"127.0.0.1:{Ports.Free()}";
        var (code, line, _) = await RunToExitAsync("noseed", new()
        {
            ["Potluck__Node__ModelPath"] = TestModels.Small(GgmlType.Q8_0),
            ["Potluck__Node__Layers"] = "0-2",
            ["Potluck__Node__PrimarySiloEndpoint"] = deadSeed,
            ["Potluck__Node__StartupTimeout"] = "2",
        });
        Assert.Equal(NodeHost.ExitCannotJoin, code);
        Assert.Contains($"did not join the pool within 2 s via seed silo {deadSeed}", line);
    }
}
