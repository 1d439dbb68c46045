using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json.Nodes;
using static Potluck.Deploy.Tests.RenderedChart;

namespace Potluck.Deploy.Tests;

/// <summary>
/// The chart's pool secrets (CA, node invite, Redis password), who mounts which of them, and its NetworkPolicies, as
/// `helm template` renders them with generated and with existing secrets.
/// </summary>
public sealed class HelmSecurityTests
{
    private const string Release = "pl";
    private const string Prefix = "pl-potluck";

    // Keys like ca.crt hold dots, which the dotted path helper would split.
    private static string SecretValue(RenderedChart chart, string name, string key) =>
        Map(chart.Get("Secret", name), "data").TryGetValue(key, out var value)
            ? Encoding.UTF8.GetString(Convert.FromBase64String(value.ToString()!))
            : throw new Xunit.Sdk.XunitException($"secret {name} has no {key}");

    private static Dictionary<object, object> Pod(RenderedChart chart, string kind, string name) => Map(chart.Get(kind, name), "spec.template.spec");

    private static string? Env(object container, string name) =>
        List(container, "env").OfType<Dictionary<object, object>>().FirstOrDefault(e => Str(e, "name") == name) is { } e ? Str(e, "value") : null;

    [HelmFact]
    public void The_generated_ca_is_a_pem_ca_certificate_with_its_key_and_the_invite_names_it_by_fingerprint()
    {
        var chart = Render(Release);
        var caSecret = chart.Get("Secret", $"{Prefix}-pool-ca");
        Assert.Equal("Opaque", Str(caSecret, "type"));
        Assert.Equal("keep", Map(caSecret, "metadata.annotations")["helm.sh/resource-policy"]); // label keys hold dots: no path

        var certPem = SecretValue(chart, $"{Prefix}-pool-ca", "ca.crt");
        var keyPem = SecretValue(chart, $"{Prefix}-pool-ca", "ca.key");
        // What the pool authority does with them: a CA certificate whose key is the given one.
        using var withKey = X509Certificate2.CreateFromPem(certPem, keyPem);
        Assert.True(withKey.HasPrivateKey);
        Assert.NotNull(withKey.GetECDsaPrivateKey());
        var constraints = Assert.Single(withKey.Extensions.OfType<X509BasicConstraintsExtension>());
        Assert.True(constraints.CertificateAuthority);
        Assert.Contains("Potluck pool potluck CA", withKey.Subject);
        Assert.True(withKey.NotAfter > DateTime.UtcNow.AddYears(9));

        var token = SecretValue(chart, $"{Prefix}-join", "node.token");
        Assert.StartsWith("plk1_", token);
        var claims = JsonNode.Parse(Convert.FromBase64String(Base64UrlToBase64(token["plk1_".Length..])))!;
        Assert.Equal("potluck", claims["p"]!.GetValue<string>());
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(withKey.RawData)), claims["f"]!.GetValue<string>());
        Assert.Equal("member", claims["r"]!.GetValue<string>());
        Assert.True(claims["s"]!.GetValue<string>().Length >= 32);
        Assert.Matches("^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", claims["i"]!.GetValue<string>());

        var password = SecretValue(chart, $"{Prefix}-redis-auth", "password");
        Assert.Matches("^[A-Za-z0-9]{40}$", password);
        // Each render without a cluster to look up draws fresh secrets; a real install keeps them (lookup).
        Assert.NotEqual(password, SecretValue(Render(Release), $"{Prefix}-redis-auth", "password"));
    }

    [HelmFact]
    public void The_gateway_holds_the_ca_nodes_get_only_the_invite_and_everyone_reads_the_redis_password_from_a_file()
    {
        var chart = Render(Release);
        var gatewayPod = Pod(chart, "Deployment", $"{Prefix}-gateway");
        var gateway = Named(gatewayPod, "containers", "gateway");
        Assert.Equal("/pool", Env(gateway, "Potluck__Security__PoolDirectory"));
        Assert.Equal("/etc/potluck/redis/password", Env(gateway, "Potluck__Cluster__RedisPasswordFile"));
        Assert.Equal($"{Prefix}-redis:6379", Env(gateway, "Potluck__Cluster__RedisConnectionString"));
        Assert.Equal("7443", Str(Named(gateway, "ports", "pool"), "containerPort"));
        Assert.Equal($"{Prefix}-pool-ca", Str(Named(gatewayPod, "volumes", "pool-ca"), "secret.secretName"));
        var init = Named(gatewayPod, "initContainers", "pool-init");
        var script = Strings(init, "args")[0];
        Assert.Contains("potluck pool init --dir /pool --pool-id \"$POOL_ID\"", script);
        Assert.Contains("potluck pool invite --dir /pool --token-file /etc/potluck/join/node.token", script);
        Assert.Equal("potluck", Env(init, "POOL_ID"));
        Assert.Equal("true", Str(init, "securityContext.readOnlyRootFilesystem"), ignoreCase: true);
        Assert.NotNull(At(Named(gatewayPod, "volumes", "pool"), "emptyDir"));

        var nodePod = Pod(chart, "StatefulSet", $"{Prefix}-node");
        var node = Named(nodePod, "containers", "node");
        Assert.Equal("/etc/potluck/join/node.token", Env(node, "Potluck__Security__JoinTokenFile"));
        Assert.Equal($"https://{Prefix}-gateway-pool:7443", Env(node, "Potluck__Node__Join"));
        Assert.Equal("/etc/potluck/redis/password", Env(node, "Potluck__Cluster__RedisPasswordFile"));
        var secretsMounted = List(nodePod, "volumes").OfType<Dictionary<object, object>>()
            .Where(v => At(v, "secret") is not null).Select(v => Str(v, "secret.secretName")).Order(StringComparer.Ordinal).ToList();
        Assert.Equal([$"{Prefix}-join", $"{Prefix}-redis-auth"], secretsMounted);
        Assert.Equal(["node.token"], List(Named(nodePod, "volumes", "join"), "secret.items").Select(i => Str(i, "key")!));
        Assert.DoesNotContain(List(nodePod, "volumes").OfType<Dictionary<object, object>>(), v => Str(v, "name") == "pool-ca");

        var redisPod = Pod(chart, "Deployment", $"{Prefix}-redis");
        var redis = Named(redisPod, "containers", "redis");
        var start = Strings(redis, "args")[0];
        Assert.Contains("requirepass", start);
        Assert.Contains("/etc/redis-auth/password", start);
        Assert.Contains("redis-server -", start); // the config on stdin: the password is not an argument
        Assert.Contains("REDISCLI_AUTH=", Strings(redis, "readinessProbe.exec.command")[2]);
        Assert.Equal($"{Prefix}-redis-auth", Str(Named(redisPod, "volumes", "redis-auth"), "secret.secretName"));
        Assert.Equal("true", Str(redis, "securityContext.readOnlyRootFilesystem"), ignoreCase: true);
        Assert.Equal(["ALL"], Strings(redis, "securityContext.capabilities.drop"));
        Assert.Equal("RuntimeDefault", Str(redisPod, "securityContext.seccompProfile.type"));
    }

    [HelmFact]
    public void Existing_secrets_are_used_and_none_is_generated()
    {
        var chart = Render(Release, """
            pool:
              id: lab
              ca: {existingSecret: corp-pool-ca}
              join: {existingSecret: corp-node-invite}
              persistence: {enabled: true, size: 128Mi}
            redis:
              auth: {existingSecret: corp-redis, existingSecretKey: redis-password}
            """);
        Assert.Empty(chart.OfKind("Secret"));
        var gatewayPod = Pod(chart, "Deployment", $"{Prefix}-gateway");
        Assert.Equal("corp-pool-ca", Str(Named(gatewayPod, "volumes", "pool-ca"), "secret.secretName"));
        Assert.Equal("corp-node-invite", Str(Named(gatewayPod, "volumes", "join"), "secret.secretName"));
        Assert.Equal("corp-redis", Str(Named(gatewayPod, "volumes", "redis-auth"), "secret.secretName"));
        Assert.Equal("redis-password", Str(List(Named(gatewayPod, "volumes", "redis-auth"), "secret.items")[0], "key"));
        Assert.Equal("lab", Env(Named(gatewayPod, "initContainers", "pool-init"), "POOL_ID"));
        // With persistence the invites and revocations survive a gateway restart.
        Assert.Equal($"{Prefix}-pool", Str(Named(gatewayPod, "volumes", "pool"), "persistentVolumeClaim.claimName"));
        Assert.Equal("128Mi", Str(chart.Get("PersistentVolumeClaim", $"{Prefix}-pool"), "spec.resources.requests.storage"));

        var nodePod = Pod(chart, "StatefulSet", $"{Prefix}-node");
        Assert.Equal("corp-node-invite", Str(Named(nodePod, "volumes", "join"), "secret.secretName"));
        Assert.Equal("corp-redis", Str(Named(nodePod, "volumes", "redis-auth"), "secret.secretName"));
        Assert.Equal("corp-redis", Str(Named(Pod(chart, "Deployment", $"{Prefix}-redis"), "volumes", "redis-auth"), "secret.secretName"));

        // An external Redis without a secret: no password file (the connection string may carry one, ssl=true for TLS).
        var external = Render(Release, "redis: {enabled: false, external: {connectionString: \"redis.infra:6380,ssl=true\"}}");
        Assert.Null(external.Find("Secret", $"{Prefix}-redis-auth"));
        var node = Named(Pod(external, "StatefulSet", $"{Prefix}-node"), "containers", "node");
        Assert.Null(Env(node, "Potluck__Cluster__RedisPasswordFile"));
        Assert.Equal("redis.infra:6380,ssl=true", Env(node, "Potluck__Cluster__RedisConnectionString"));
    }

    [HelmFact]
    public void An_existing_ca_the_chart_cannot_read_needs_an_existing_invite_and_a_bad_pool_id_is_refused()
    {
        var noInvite = RunTemplate(Release, "pool: {ca: {existingSecret: corp-pool-ca}}");
        Assert.NotEqual(0, noInvite.ExitCode);
        Assert.Contains("name its Secret in pool.join.existingSecret", noInvite.Output);

        var badId = RunTemplate(Release, "pool: {id: \"../evil\"}");
        Assert.NotEqual(0, badId.ExitCode);
        Assert.Contains("pool.id (or clusterId) must be 1 to 63 characters", badId.Output);
    }

    [HelmFact]
    public void Network_policies_deny_by_default_and_open_only_the_api_to_clients_and_the_rest_to_the_release()
    {
        var chart = Render(Release);
        var deny = chart.Get("NetworkPolicy", $"{Prefix}-default-deny");
        Assert.Equal(["Ingress"], Strings(deny, "spec.policyTypes"));
        Assert.Empty(List(deny, "spec.ingress"));
        AssertReleasePods(Map(deny, "spec.podSelector.matchLabels"), component: null);

        var gateway = chart.Get("NetworkPolicy", $"{Prefix}-gateway");
        Assert.Equal("gateway", Component(Map(gateway, "spec.podSelector.matchLabels")));
        var rules = List(gateway, "spec.ingress");
        Assert.Equal(2, rules.Count);
        Assert.Equal(["http"], Ports(rules[0]));
        Assert.Null(At(rules[0], "from")); // no clients listed: any source (the API has its own keys)
        Assert.Equal(["pool", "silo"], Ports(rules[1]));
        AssertOnlyReleasePods(rules[1]);

        var node = chart.Get("NetworkPolicy", $"{Prefix}-node");
        Assert.Equal("node", Component(Map(node, "spec.podSelector.matchLabels")));
        var nodeRule = Assert.Single(List(node, "spec.ingress"));
        Assert.Equal(["grpc", "silo"], Ports(nodeRule));
        AssertOnlyReleasePods(nodeRule);

        var redis = chart.Get("NetworkPolicy", $"{Prefix}-redis");
        Assert.Equal("redis", Component(Map(redis, "spec.podSelector.matchLabels")));
        var redisRule = Assert.Single(List(redis, "spec.ingress"));
        Assert.Equal(["redis"], Ports(redisRule));
        AssertOnlyReleasePods(redisRule);

        // Every named port a policy opens exists on the pods it selects.
        var gatewayPorts = List(Named(Pod(chart, "Deployment", $"{Prefix}-gateway"), "containers", "gateway"), "ports").Select(p => Str(p, "name")!).ToHashSet();
        Assert.Superset(gatewayPorts, rules.SelectMany(Ports).ToHashSet());
        var nodePorts = List(Named(Pod(chart, "StatefulSet", $"{Prefix}-node"), "containers", "node"), "ports").Select(p => Str(p, "name")!).ToHashSet();
        Assert.Superset(nodePorts, Ports(nodeRule).ToHashSet());
    }

    [HelmFact]
    public void Api_clients_narrow_the_gateway_port_and_policies_can_be_turned_off()
    {
        var chart = Render(Release, """
            networkPolicy:
              apiClients:
                - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}
                - ipBlock: {cidr: 10.20.0.0/16}
            redis: {enabled: false, external: {connectionString: "redis.infra:6379"}}
            """);
        var api = List(chart.Get("NetworkPolicy", $"{Prefix}-gateway"), "spec.ingress")[0];
        var from = List(api, "from");
        Assert.Equal(2, from.Count);
        Assert.Equal("ingress-nginx", Map(from[0], "namespaceSelector.matchLabels")["kubernetes.io/metadata.name"]);
        Assert.Equal("10.20.0.0/16", Str(from[1], "ipBlock.cidr"));
        Assert.Null(chart.Find("NetworkPolicy", $"{Prefix}-redis")); // no bundled Redis, no policy for it

        Assert.Empty(Render(Release, "networkPolicy: {enabled: false}").OfKind("NetworkPolicy"));
    }

    private static List<string> Ports(object rule) =>
        List(rule, "ports").Select(p => Str(p, "port")!).Order(StringComparer.Ordinal).ToList();

    private static void AssertOnlyReleasePods(object rule)
    {
        var peer = Assert.Single(List(rule, "from"));
        Assert.Null(At(peer, "namespaceSelector"));
        Assert.Null(At(peer, "ipBlock"));
        AssertReleasePods(Map(peer, "podSelector.matchLabels"), component: null);
    }

    private static void AssertReleasePods(Dictionary<object, object> labels, string? component)
    {
        Assert.Equal("potluck", labels["app.kubernetes.io/name"]);
        Assert.Equal(Release, labels["app.kubernetes.io/instance"]);
        Assert.Equal(component, Component(labels));
    }

    private static string? Component(Dictionary<object, object> labels) =>
        labels.TryGetValue("app.kubernetes.io/component", out var value) ? value.ToString() : null;

    private static string Base64UrlToBase64(string text)
    {
        var b = text.Replace('-', '+').Replace('_', '/');
        return b + new string('=', (4 - b.Length % 4) % 4);
    }
}
