using System.Text.Json.Nodes;

namespace Potluck.Deploy.Tests;

/// <summary>
/// The repository's docker-compose.yml as `docker compose config` resolves it (every profile, default settings and a
/// bring-your-own CA folder): every container hardened, Redis behind a password, the CA key only where it belongs.
/// </summary>
public sealed class ComposeConfigTests
{
    private static JsonObject Config(IReadOnlyDictionary<string, string>? environment = null)
    {
        var env = new Dictionary<string, string>(environment ?? new Dictionary<string, string>())
        {
            // A fixed project name: the test must not depend on the checkout's folder name.
            ["COMPOSE_PROJECT_NAME"] = "potluck-config-test",
        };
        var json = ProcessRunner.RunChecked("docker", "compose -f docker-compose.yml --profile observability config --format json",
            TimeSpan.FromSeconds(60), environment: env);
        return JsonNode.Parse(json)!.AsObject();
    }

    private static JsonObject Service(JsonObject config, string name) =>
        config["services"]?[name]?.AsObject() ?? throw new Xunit.Sdk.XunitException($"compose has no service {name}");

    private static IEnumerable<string> Strings(JsonNode? node) =>
        node?.AsArray().Select(n => n!.GetValue<string>()) ?? [];

    private static string Env(JsonObject service, string name) =>
        service["environment"]?[name]?.GetValue<string>() ?? throw new Xunit.Sdk.XunitException($"{name} is not set");

    private static List<(string Source, string Target, bool ReadOnly, string Type)> Mounts(JsonObject service) =>
        service["volumes"]?.AsArray().Select(v => (
            v!["source"]?.GetValue<string>() ?? "",
            v["target"]!.GetValue<string>(),
            v["read_only"]?.GetValue<bool>() ?? false,
            v["type"]!.GetValue<string>())).ToList() ?? [];

    [ComposeFact]
    public void Every_service_has_a_read_only_root_no_capabilities_and_no_new_privileges()
    {
        var config = Config();
        var services = config["services"]!.AsObject();
        Assert.Superset(new HashSet<string> { "redis", "pool", "model", "gateway", "node1", "node2", "node3", "prometheus" },
            services.Select(s => s.Key).ToHashSet());
        foreach (var (name, node) in services)
        {
            // Prometheus' own image (the observability profile) runs as it ships; every Potluck service is hardened.
            if (name == "prometheus") continue;
            var service = node!.AsObject();
            Assert.True(service["read_only"]?.GetValue<bool>() == true, $"{name}: read_only is not true");
            Assert.Equal(["ALL"], Strings(service["cap_drop"]));
            Assert.Contains("no-new-privileges:true", Strings(service["security_opt"]));
            Assert.Null(service["privileged"]);
            Assert.Null(service["cap_add"]);
            // A read-only root still needs a writable /tmp (.NET, POTLUCK_HOME, the member identity).
            Assert.Contains("/tmp", Strings(service["tmpfs"]));
            // The only other writable places are named volumes (or the operator's bind mounts), never the image.
            foreach (var mount in Mounts(service).Where(m => !m.ReadOnly))
                Assert.True(mount.Type is "volume" or "bind", $"{name}: writable {mount.Type} at {mount.Target}");
            // Published ports bind loopback unless POTLUCK_BIND says otherwise.
            foreach (var port in service["ports"]?.AsArray() ?? [])
                Assert.Equal("127.0.0.1", port!["host_ip"]?.GetValue<string>());
        }
    }

    [ComposeFact]
    public void Redis_requires_the_generated_password_and_its_healthcheck_authenticates()
    {
        var config = Config();
        var redis = Service(config, "redis");
        var script = string.Join("\n", Strings(redis["command"]));
        Assert.Contains("requirepass", script);
        Assert.Contains("/secrets/redis.password", script);
        // The config (and so the password) goes in on stdin, not on redis-server's command line.
        Assert.Contains("redis-server -", script);
        Assert.DoesNotContain("--requirepass", script);
        var health = string.Join(" ", Strings(redis["healthcheck"]?["test"]));
        Assert.Contains("REDISCLI_AUTH=", health);
        Assert.Contains("grep -q PONG", health); // an unauthenticated answer is NOAUTH, which must count as unhealthy
        Assert.Equal("1654:1654", redis["user"]?.GetValue<string>());
        Assert.Equal([("potluck-secrets", "/secrets", true, "volume")], Mounts(redis));
        Assert.Equal("service_completed_successfully", redis["depends_on"]?["pool"]?["condition"]?.GetValue<string>());

        // `pool` writes the password (random unless one is given), the invite and the CA certificate for the members.
        var pool = Service(config, "pool");
        var poolScript = string.Join("\n", Strings(pool["command"]));
        Assert.Contains("potluck pool init --dir /pool", poolScript);
        Assert.Contains("potluck pool invite --dir /pool", poolScript);
        Assert.Contains("/dev/urandom", poolScript);
        Assert.Contains("/secrets/node.token", poolScript);
        Assert.Contains("cp /pool/ca.crt /secrets/ca.crt", poolScript);
        Assert.Contains(("potluck-pool", "/pool", false, "volume"), Mounts(pool));
        Assert.Contains(("potluck-secrets", "/secrets", false, "volume"), Mounts(pool));

        // Every member reads the password from the file; no connection string carries it.
        foreach (var member in new[] { "gateway", "node1", "node2", "node3" })
        {
            var service = Service(config, member);
            Assert.Equal("redis:6379", Env(service, "Potluck__Cluster__RedisConnectionString"));
            Assert.Equal("/secrets/redis.password", Env(service, "Potluck__Cluster__RedisPasswordFile"));
            Assert.Contains(("potluck-secrets", "/secrets", true, "volume"), Mounts(service));
        }
    }

    [ComposeFact]
    public void Only_the_gateway_and_pool_mount_the_ca_key_and_nodes_join_with_the_invite_file()
    {
        var config = Config();
        var gateway = Service(config, "gateway");
        Assert.Equal("/pool", Env(gateway, "Potluck__Security__PoolDirectory"));
        Assert.Contains(("potluck-pool", "/pool", false, "volume"), Mounts(gateway));
        Assert.Equal("service_completed_successfully", gateway["depends_on"]?["pool"]?["condition"]?.GetValue<string>());
        foreach (var (name, node) in config["services"]!.AsObject())
        {
            if (name is "gateway" or "pool") continue;
            Assert.DoesNotContain(Mounts(node!.AsObject()), m => m.Target == "/pool" || m.Source.Contains("pool", StringComparison.Ordinal));
        }
        foreach (var name in new[] { "node1", "node2", "node3" })
        {
            var node = Service(config, name);
            Assert.Equal("/secrets/node.token", Env(node, "Potluck__Security__JoinTokenFile"));
            Assert.StartsWith("https://gateway:", Env(node, "Potluck__Node__Join"));
            Assert.Equal("service_healthy", node["depends_on"]?["gateway"]?["condition"]?.GetValue<string>());
        }
    }

    [ComposeFact]
    public void An_operators_own_ca_folder_is_bind_mounted_for_pool_and_gateway_only()
    {
        var own = Directory.CreateTempSubdirectory("potluck-own-ca");
        try
        {
            var config = Config(new Dictionary<string, string> { ["POTLUCK_POOL_DIR"] = own.FullName, ["POTLUCK_POOL_ID"] = "lab" });
            foreach (var name in new[] { "pool", "gateway" })
                Assert.Contains((own.FullName, "/pool", false, "bind"), Mounts(Service(config, name)));
            Assert.Equal("lab", Env(Service(config, "pool"), "POTLUCK_POOL_ID"));
            Assert.DoesNotContain(Mounts(Service(config, "node1")), m => m.Source == own.FullName);
            Assert.DoesNotContain(Mounts(Service(config, "redis")), m => m.Source == own.FullName);
        }
        finally
        {
            own.Delete();
        }
    }
}
