using System.Net;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Hosting;
using Potluck.Cluster.Membership;
using Potluck.Hosting;
using StackExchange.Redis;

namespace Potluck.Deploy.Tests;

/// <summary>
/// The Redis password from a secret file (Potluck:Cluster:RedisPasswordFile, what compose and the chart mount): how the
/// file is read, how it meets the connection string, that it never shows in a message, and that a real redis-server
/// started with requirepass (config on stdin, as compose does) accepts exactly those options.
/// </summary>
public sealed class RedisPasswordTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("potluck-redis-secret");

    private string Secret(string name, string content)
    {
        var path = Path.Combine(_dir.FullName, name);
        File.WriteAllText(path, content);
        return path;
    }

    [Fact]
    public void A_trailing_newline_and_spaces_are_not_part_of_the_password()
    {
        Assert.Equal("s3cret-Pa55", RedisConnection.ReadPasswordFile(Secret("lf", "s3cret-Pa55\n")));
        Assert.Equal("s3cret-Pa55", RedisConnection.ReadPasswordFile(Secret("crlf", "s3cret-Pa55\r\n")));
        Assert.Equal("s3cret-Pa55", RedisConnection.ReadPasswordFile(Secret("none", "s3cret-Pa55")));
        // Characters the connection-string syntax cannot carry are fine from a file (base64 passwords hold '=' and '+').
        Assert.Equal("a,b=c+d/e==", RedisConnection.ReadPasswordFile(Secret("b64", "a,b=c+d/e==\n\n")));
    }

    [Fact]
    public void A_missing_empty_or_multi_line_file_is_refused_with_its_path_and_never_its_content()
    {
        var missing = Path.Combine(_dir.FullName, "absent");
        var e = Assert.Throws<ArgumentException>(() => RedisConnection.ReadPasswordFile(missing));
        Assert.Contains(missing, e.Message);
        Assert.Contains("cannot be read", e.Message);

        var empty = Assert.Throws<ArgumentException>(() => RedisConnection.ReadPasswordFile(Secret("empty", "")));
        Assert.Contains("is empty", empty.Message);
        var blank = Assert.Throws<ArgumentException>(() => RedisConnection.ReadPasswordFile(Secret("blank", "\n \n")));
        Assert.Contains("is empty", blank.Message);

        var twoLines = Assert.Throws<ArgumentException>(() => RedisConnection.ReadPasswordFile(Secret("two", "first-secret\nsecond-secret\n")));
        Assert.Contains("more than one line", twoLines.Message);
        Assert.DoesNotContain("first-secret", twoLines.Message);
    }

    [Fact]
    public void The_file_sets_the_password_on_the_options_and_the_connection_string_keeps_its_own_tls_settings()
    {
        var options = RedisConnection.Options("redis.infra:6380,ssl=true,sslHost=redis.infra", Secret("pw", "from-file\n"));
        Assert.Equal("from-file", options.Password);
        Assert.True(options.Ssl);
        Assert.Equal("redis.infra", options.SslHost);
        Assert.Equal("redis.infra:6380", Assert.IsType<System.Net.DnsEndPoint>(Assert.Single(options.EndPoints)) is var e ? $"{e.Host}:{e.Port}" : "");

        // A password in the connection string alone still works; no file, no change.
        Assert.Equal("inline", RedisConnection.Options("redis:6379,password=inline", null).Password);
        Assert.Null(RedisConnection.Options("redis:6379", "  ").Password);
    }

    [Fact]
    public void A_password_in_both_places_is_refused_without_showing_either()
    {
        var e = Assert.Throws<ArgumentException>(() => RedisConnection.Options("redis:6379,password=inline-secret", Secret("pw", "file-secret")));
        Assert.Contains("give one of them", e.Message);
        Assert.Contains("'redis:6379'", e.Message);
        Assert.DoesNotContain("inline-secret", e.Message);
        Assert.DoesNotContain("file-secret", e.Message);
        Assert.Equal("redis:6379,10.0.0.2:6379", RedisConnection.Redact("redis:6379, password=x,ssl=true,10.0.0.2:6379"));
    }

    [Fact]
    public void Cluster_settings_read_the_key_and_fail_start_up_naming_the_environment_variable_when_the_file_is_unusable()
    {
        var good = Secret("pw", "s3cret\n");
        var settings = ClusterSettings.FromConfiguration(Configuration(("Potluck:Cluster:RedisConnectionString", "redis:6379"),
            ("Potluck:Cluster:RedisPasswordFile", good)), new ClusterSettings("potluck", null, null, false));
        Assert.Equal(good, settings.RedisPasswordFile);
        // The password stays in its file: it is not copied into the connection string (which reaches logs and flags).
        Assert.Equal("redis:6379", settings.RedisConnectionString);

        var missing = Path.Combine(_dir.FullName, "absent");
        var e = Assert.Throws<ConfigurationUsageException>(() => ClusterSettings.FromConfiguration(
            Configuration(("Potluck:Cluster:RedisPasswordFile", missing)), new ClusterSettings("potluck", null, null, false)));
        Assert.Contains("Potluck__Cluster__RedisPasswordFile", e.Message);
        Assert.Contains(missing, e.Message);

        var empty = Assert.Throws<ConfigurationUsageException>(() => ClusterSettings.FromConfiguration(
            Configuration(("Potluck:Cluster:RedisPasswordFile", Secret("empty", "\n"))), new ClusterSettings("potluck", null, null, false)));
        Assert.Contains("is empty", empty.Message);
    }

    [RedisFact]
    public async Task A_redis_server_that_requires_the_password_accepts_the_options_and_refuses_a_client_without_it()
    {
        const string password = "Zx9-generated.like~compose+does/=";
        var (server, endpoint) = StartRedisWithPassword(password);
        await using (server)
        {
            var options = RedisConnection.Options($"{endpoint},connectTimeout=2000,abortConnect=false", Secret("redis.password", password + "\n"));
            await using (var authenticated = await ConnectWhenUpAsync(options))
            {
                var pong = await authenticated.GetDatabase().PingAsync();
                Assert.True(pong < TimeSpan.FromSeconds(5));
            }

            await using var anonymous = await ConnectionMultiplexer.ConnectAsync(RedisConnection.Options($"{endpoint},abortConnect=false", null));
            var refused = await Assert.ThrowsAnyAsync<RedisException>(() => anonymous.GetDatabase().StringGetAsync("potluck-probe"));
            Assert.Contains("NOAUTH", refused.ToString(), StringComparison.OrdinalIgnoreCase);
        }
    }

    /// <summary>
    /// The way compose and the chart run members: the silo's configuration names the password file
    /// (Potluck__Cluster__RedisPasswordFile), and a real Orleans silo joins Redis membership with it; without it, the
    /// same silo cannot start.
    /// </summary>
    [RedisFact]
    public async Task A_silo_joins_password_protected_redis_membership_through_the_configured_file_and_not_without_it()
    {
        const string password = "silo-secret-4f1c";
        var (server, endpoint) = StartRedisWithPassword(password);
        await using (server)
        {
            var cluster = $"pw-{Guid.NewGuid():N}";
            using (var silo = Silo(cluster, endpoint, Secret("redis.password", password + "\n")))
            {
                using var start = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                await silo.StartAsync(start.Token);
                // Its membership entry is in Redis: read it back with the password.
                await using var reader = await ConnectWhenUpAsync(RedisConnection.Options($"{endpoint},password={password},abortConnect=false", null));
                var keys = reader.GetServer(reader.GetEndPoints()[0]).Keys(pattern: $"*{cluster}*").ToList();
                Assert.NotEmpty(keys);
                using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await silo.StopAsync(stop.Token);
            }

            using var withoutPassword = Silo($"{cluster}-nopw", endpoint, passwordFile: null);
            using var attempt = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            var failure = await Assert.ThrowsAnyAsync<Exception>(() => withoutPassword.StartAsync(attempt.Token));
            Assert.False(attempt.IsCancellationRequested, $"the silo should fail on NOAUTH, not wait: {failure}");
            Assert.Contains("NOAUTH", failure.ToString(), StringComparison.OrdinalIgnoreCase);
        }
    }

    private static IHost Silo(string cluster, string redisEndpoint, string? passwordFile)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        if (passwordFile is not null)
            builder.Configuration.AddInMemoryCollection([new KeyValuePair<string, string?>(RedisConnection.PasswordFileKey, passwordFile)]);
        var settings = new SiloMembershipSettings(cluster, IPAddress.Loopback, IPAddress.Loopback, Ports.Free(), 0, redisEndpoint, null,
            FastFailureDetection: true);
        builder.UseOrleans(silo => silo.UsePotluckMembership(settings));
        return builder.Build();
    }

    private static (ChildProcess Server, string Endpoint) StartRedisWithPassword(string password)
    {
        var executable = RedisServer.FindExecutable()
            ?? throw new InvalidOperationException("redis-server is not installed; install the Debian package redis-server");
        var port = Ports.Free();
        // The config arrives on stdin, as in docker-compose.yml and the chart: the password is not on the command line.
        var server = ChildProcess.Start(
            ChildProcess.StartInfo(executable, ["-", "--bind", "127.0.0.1", "--port", $"{port}", "--save", "", "--appendonly", "no"],
                workingDirectory: Path.GetTempPath()),
            name: "redis-server (requirepass)", standardInput: $"requirepass {password}\n");
        return (server, $"127.0.0.1:{port}");
    }

    private static async Task<ConnectionMultiplexer> ConnectWhenUpAsync(ConfigurationOptions options)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (true)
        {
            var connection = await ConnectionMultiplexer.ConnectAsync(options.Clone());
            if (connection.IsConnected) return connection;
            await connection.DisposeAsync();
            if (DateTime.UtcNow > deadline) throw new TimeoutException("redis-server did not accept the authenticated connection within 15 s");
            await Task.Delay(200);
        }
    }

    private static IConfiguration Configuration(params (string Key, string Value)[] values) =>
        new ConfigurationBuilder().AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>(v.Key, v.Value))).Build();

    public void Dispose() => _dir.Delete(recursive: true);
}
