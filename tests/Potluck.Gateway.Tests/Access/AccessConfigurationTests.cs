using System.Net;
using Microsoft.Extensions.Configuration;
using Potluck.Gateway.Access;
using Potluck.Hosting;

namespace Potluck.Gateway.Tests.Access;

/// <summary>Keys, key files, the start rules and allowed hosts, without a server.</summary>
public sealed class AccessConfigurationTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("potluck-access-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static GatewayOptions Options(string listen = "127.0.0.1") => new() { ModelPath = "m.gguf", ListenAddress = listen };

    private string WriteFile(string name, params string[] lines)
    {
        var path = Path.Combine(_dir, name);
        File.WriteAllLines(path, lines);
        return path;
    }

    [Fact]
    public void Keys_from_flags_file_and_environment_all_match_and_nothing_else_does()
    {
        var file = WriteFile("keys.txt", "# team keys", "", "alice:alice-key-0001 rpm=30 concurrency=2", "bob-key-00000001  # no name", "   ");
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Potluck:Gateway:ApiKeys"] = "flag-key-0001,flag-key-0002",
            ["Potluck:Gateway:ApiKeysFile"] = file,
            ["Potluck:Gateway:AdminKey"] = "admin-key-0001",
            [GatewayOptions.ApiKeysEnvironmentVariable] = "env-key-00001, env-key-00002",
        }).Build();
        var options = Options().WithConfiguration(configuration);
        Assert.Equal(["flag-key-0001", "flag-key-0002", "env-key-00001", "env-key-00002"], options.ApiKeys);
        var keys = AccessKeys.Load(options);
        Assert.True(keys.HasApiKeys);
        Assert.True(keys.HasAdminKey);
        Assert.Equal(6, keys.ApiKeyCount);
        var alice = keys.Match("alice-key-0001");
        Assert.NotNull(alice);
        Assert.Equal(("alice", KeyRole.Client, 30, 2), (alice.Name, alice.Role, alice.RequestsPerMinute, alice.ConcurrencyLimit));
        Assert.StartsWith("key-", keys.Match("bob-key-00000001")!.Name);
        Assert.NotNull(keys.Match("env-key-00002"));
        Assert.Equal(KeyRole.Admin, keys.Match("admin-key-0001")!.Role);
        Assert.True(keys.IsAdmin("admin-key-0001"));
        Assert.False(keys.IsAdmin("alice-key-0001"));
        Assert.Null(keys.Match("alice-key-0002"));
        Assert.Null(keys.Match(""));
        Assert.Null(keys.Match("alice:alice-key-0001"));
    }

    [Fact]
    public void The_admin_key_can_come_from_a_file_and_never_doubles_as_an_api_key()
    {
        var adminFile = WriteFile("admin.key", "# the operator's key", "file-admin-key-01");
        Assert.True(AccessKeys.Load(Options() with { AdminKeyFile = adminFile }).IsAdmin("file-admin-key-01"));
        var same = Assert.Throws<ConfigurationUsageException>(() => AccessKeys.Load(Options() with { ApiKeys = ["shared-key-001"], AdminKey = "shared-key-001" }));
        Assert.Contains("also an API key", same.Message);
        Assert.Throws<ConfigurationUsageException>(() => AccessKeys.Load(Options() with { AdminKey = "admin-key-0001", AdminKeyFile = adminFile }));
    }

    [Theory]
    [InlineData("short", "at least 8")]
    [InlineData("has space in it", "whitespace")]
    [InlineData("comma,separated-key", "','")]
    public void Bad_keys_are_refused_at_start(string key, string message)
    {
        var error = Assert.Throws<ConfigurationUsageException>(() => AccessKeys.Load(Options() with { ApiKeys = [key] }));
        Assert.Contains(message, error.Message);
        Assert.DoesNotContain(key, error.Message); // never echo a key
    }

    [Theory]
    [InlineData("bad*name:key-00000001", "key name")]
    [InlineData("name:key-00000001 rpm=lots", "rpm=N")]
    [InlineData("name:key-00000001 burst=3", "unknown setting")]
    public void Bad_key_file_lines_name_the_line(string line, string message)
    {
        var file = WriteFile("bad.txt", "good:good-key-0001", line);
        var error = Assert.Throws<ConfigurationUsageException>(() => AccessKeys.Load(Options() with { ApiKeysFile = file }));
        Assert.Contains($"{file}:2", error.Message);
        Assert.Contains(message, error.Message);
    }

    [Fact]
    public void A_missing_keys_file_is_a_usage_error()
    {
        var error = Assert.Throws<ConfigurationUsageException>(() => AccessKeys.Load(Options() with { ApiKeysFile = Path.Combine(_dir, "none.txt") }));
        Assert.Contains("--api-keys-file", error.Message);
    }

    [Fact]
    public void Loopback_without_keys_is_open_and_a_lan_address_without_keys_refuses_unless_insecure()
    {
        var desktop = GatewayAccess.Resolve(Options());
        Assert.True(desktop.ApiIsOpen);
        Assert.Equal(OperatorAccess.Open, desktop.Operator);
        Assert.Equal(GatewayAccess.LoopbackHosts, desktop.AllowedHosts);
        Assert.Empty(desktop.Warnings);

        var refused = Assert.Throws<ConfigurationUsageException>(() => GatewayAccess.Resolve(Options("0.0.0.0")));
        Assert.Contains("--insecure", refused.Message);
        Assert.Contains("--api-key", refused.Message);

        var insecure = GatewayAccess.Resolve(Options("0.0.0.0") with { Insecure = true });
        Assert.True(insecure.ApiIsOpen);
        Assert.Equal(OperatorAccess.Open, insecure.Operator);
        Assert.Contains(insecure.Warnings, w => w.Contains("--insecure", StringComparison.Ordinal));
        // Open on the LAN: only this machine's own names and addresses, so a rebound DNS name is refused.
        Assert.DoesNotContain("*", insecure.AllowedHosts);
        Assert.Contains(Dns.GetHostName(), insecure.AllowedHosts);
        Assert.Contains("127.0.0.1", insecure.AllowedHosts);
    }

    [Fact]
    public void With_keys_on_a_lan_address_operator_endpoints_close_until_an_admin_key_is_set()
    {
        var keyed = GatewayAccess.Resolve(Options("0.0.0.0") with { ApiKeys = ["client-key-0001"] });
        Assert.False(keyed.ApiIsOpen);
        Assert.Equal(OperatorAccess.Closed, keyed.Operator);
        Assert.Equal(["*"], keyed.AllowedHosts);
        Assert.Contains(keyed.Warnings, w => w.Contains("plaintext", StringComparison.Ordinal));

        var admin = GatewayAccess.Resolve(Options("0.0.0.0") with { ApiKeys = ["client-key-0001"], AdminKey = "admin-key-0001", AllowedHosts = ["pool.example"] });
        Assert.Equal(OperatorAccess.AdminKey, admin.Operator);
        Assert.Equal(["pool.example", .. GatewayAccess.LoopbackHosts], admin.AllowedHosts);
    }

    [Fact]
    public void Tls_needs_both_files()
    {
        var error = Assert.Throws<ConfigurationUsageException>(() => GatewayAccess.Resolve(Options() with { TlsCertificateFile = "cert.pem" }));
        Assert.Contains("--tls-key", error.Message);
        var unreadable = Assert.Throws<ConfigurationUsageException>(() => GatewayAccess.Resolve(Options() with
        {
            TlsCertificateFile = Path.Combine(_dir, "none.pem"), TlsKeyFile = Path.Combine(_dir, "none.key"),
        }));
        Assert.Contains("none.pem", unreadable.Message);
    }

    [Fact]
    public void Bad_cors_origins_and_limits_fail_validation()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Potluck:Gateway:CorsOrigins"] = "https://app.example,http://localhost:3000",
            ["Potluck:Gateway:RateLimitPerMinute"] = "0",
            ["Potluck:Gateway:ConcurrencyLimit"] = "4",
            ["Potluck:Gateway:Insecure"] = "true",
        }).Build();
        var options = Options().WithConfiguration(configuration);
        Assert.Equal(["https://app.example", "http://localhost:3000"], options.CorsOrigins);
        Assert.Equal((0, 4, true), (options.RateLimitPerMinute, options.ConcurrencyLimit, options.Insecure));
        foreach (var bad in new[] { "*", "app.example", "https://app.example/", "https://app.example/path" })
            Assert.True(new GatewayOptionsValidator().Validate(null, Options() with { CorsOrigins = [bad] }).Failed, bad);
    }

    [Theory]
    [InlineData("application/json", true)]
    [InlineData("application/json; charset=utf-8", true)]
    [InlineData("Application/JSON; charset=UTF-8", true)]
    [InlineData("application/json; charset=iso-8859-1", false)]
    [InlineData("text/plain", false)]
    [InlineData("text/plain; charset=utf-8", false)]
    [InlineData("application/x-www-form-urlencoded", false)]
    [InlineData("multipart/form-data; boundary=x", false)]
    [InlineData("", false)]
    [InlineData(null, false)]
    public void Only_json_is_json(string? contentType, bool expected) => Assert.Equal(expected, JsonContentType.IsJson(contentType));

    [Fact]
    public void The_silo_binds_the_listen_address_not_every_interface()
    {
        // The bug this fixes: advertising a LAN address made the silo bind 0.0.0.0 while the API stayed on loopback.
        Assert.Equal(IPAddress.Loopback, GatewayHost.SiloListenAddress(Options() with { AdvertisedHost = "192.168.1.10" }));
        Assert.Equal(IPAddress.Any, GatewayHost.SiloListenAddress(Options() with { AdvertisedHost = "192.168.1.10", SiloListenAddress = "0.0.0.0" }));
        Assert.Equal(IPAddress.Any, GatewayHost.SiloListenAddress(Options("0.0.0.0") with { AdvertisedHost = "192.168.1.10" }));
        Assert.Equal(IPAddress.Loopback, GatewayHost.SiloListenAddress(Options("0.0.0.0") with { SiloListenAddress = "127.0.0.1" }));
    }

    [Fact]
    public void The_request_bucket_holds_a_minute_and_refills_evenly()
    {
        var fast = RateLimits.Bucket(600);
        Assert.Equal((600, 10, TimeSpan.FromSeconds(1)), (fast.TokenLimit, fast.TokensPerPeriod, fast.ReplenishmentPeriod));
        var slow = RateLimits.Bucket(3);
        Assert.Equal((3, 1, TimeSpan.FromSeconds(20)), (slow.TokenLimit, slow.TokensPerPeriod, slow.ReplenishmentPeriod));
    }

    [Fact]
    public void Options_never_print_their_keys()
    {
        var text = (Options() with { ApiKeys = ["printed-key-0001"], AdminKey = "printed-admin-01" }).ToString();
        Assert.DoesNotContain("printed-key-0001", text);
        Assert.DoesNotContain("printed-admin-01", text);
        Assert.Contains("AdminKey = set", text);
    }
}
