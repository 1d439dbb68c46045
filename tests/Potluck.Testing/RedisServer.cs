using System.Net.Sockets;
using System.Text;
using Xunit;

namespace Potluck.Testing;

/// <summary>
/// A real Redis for membership tests: the CI's (POTLUCK_TEST_REDIS=host:port) or a private
/// `redis-server` child on a free loopback port, without persistence, killed on dispose.
/// </summary>
public sealed class RedisServer : IAsyncDisposable
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(15);

    private readonly ChildProcess? _process;

    private RedisServer(string endpoint, ChildProcess? process)
    {
        Endpoint = endpoint;
        _process = process;
    }

    /// <summary>host:port, usable as an Orleans Redis clustering connection string.</summary>
    public string Endpoint { get; }

    public static string? ExternalEndpoint => Environment.GetEnvironmentVariable("POTLUCK_TEST_REDIS") is { Length: > 0 } e ? e : null;

    /// <summary>In CI (CI=true) or with POTLUCK_REQUIRE_REDIS=1 a missing redis-server fails the test instead of skipping it.</summary>
    public static bool Required =>
        string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase)
        || Environment.GetEnvironmentVariable("POTLUCK_REQUIRE_REDIS") == "1";

    public static string? FindExecutable()
    {
        var path = Environment.GetEnvironmentVariable("PATH") ?? "";
        foreach (var dir in path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries).Append("/usr/bin").Append("/usr/sbin"))
        {
            var candidate = Path.Combine(dir, "redis-server");
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }

    /// <summary>Why a Redis test cannot run here, or null when it can (or must, and will then fail loudly).</summary>
    public static string? SkipReason =>
        ExternalEndpoint is null && !Required && FindExecutable() is null
            ? "redis-server is not installed (apt-get install redis-server) and POTLUCK_TEST_REDIS is not set"
            : null;

    public static async Task<RedisServer> StartAsync()
    {
        if (ExternalEndpoint is { } external)
        {
            await WaitForPongAsync(external, null);
            return new RedisServer(external, null);
        }
        var executable = FindExecutable()
            ?? throw new InvalidOperationException("redis-server is not installed and POTLUCK_TEST_REDIS is not set; install the Debian package redis-server");
        var port = Ports.Free();
        var process = ChildProcess.Start(executable,
            ["--bind", "127.0.0.1", "--port", $"{port}", "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
            workingDirectory: Path.GetTempPath(), name: "redis-server");
        var server = new RedisServer($"127.0.0.1:{port}", process);
        try
        {
            await WaitForPongAsync(server.Endpoint, process);
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    private static async Task WaitForPongAsync(string endpoint, ChildProcess? process)
    {
        var colon = endpoint.LastIndexOf(':');
        var host = endpoint[..colon];
        var port = int.Parse(endpoint[(colon + 1)..]);
        var deadline = DateTime.UtcNow + StartTimeout;
        var buffer = new byte[64];
        while (true)
        {
            if (process is { HasExited: true }) throw new InvalidOperationException($"redis-server exited with code {process.ExitCode} before answering");
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                using var client = new TcpClient();
                await client.ConnectAsync(host, port, timeout.Token);
                var stream = client.GetStream();
                await stream.WriteAsync("PING\r\n"u8.ToArray(), timeout.Token);
                var read = await stream.ReadAsync(buffer, timeout.Token);
                if (Encoding.ASCII.GetString(buffer, 0, read).StartsWith("+PONG", StringComparison.Ordinal)) return;
            }
            catch (Exception e) when (e is SocketException or IOException or OperationCanceledException && DateTime.UtcNow < deadline)
            {
            }
            if (DateTime.UtcNow >= deadline) throw new TimeoutException($"redis at {endpoint} did not answer PING within {StartTimeout.TotalSeconds} s");
            await Task.Delay(100);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_process is not null) await _process.DisposeAsync();
    }
}

/// <summary>A fact that needs Redis: skipped with a reason when redis-server is missing, unless CI requires it.</summary>
public sealed class RedisFactAttribute : FactAttribute
{
    public RedisFactAttribute()
    {
        if (RedisServer.SkipReason is { } reason) Skip = reason;
    }
}
