using Microsoft.Extensions.Configuration;
using Potluck.Node;
using static Potluck.Deploy.Tests.RenderedChart;

namespace Potluck.Deploy.Tests;

/// <summary>helm lint and helm template of helm/potluck, with the rendered objects parsed and checked.</summary>
public sealed class HelmChartTests
{
    private const string Release = "pl";
    private const string Prefix = "pl-potluck";

    private const string CustomValues = """
        image: {repository: registry.lab/potluck, tag: "1.2.3"}
        clusterId: lab-pool
        model:
          source: pvc
          file: qwen2.5-7b-q4_k_m.gguf
          pvc: {existingClaim: shared-models}
        redis:
          enabled: false
          external: {connectionString: "redis.infra:6380,password=s3cret"}
        gateway:
          httpPort: 9000
          service: {type: LoadBalancer, port: 80}
          extraEnv: [{name: Potluck__Gateway__MaxConcurrentSessions, value: "16"}]
        nodes:
          replicas: 4
          layers: ["0-8", "8-16", "16-24", "24-28"]
          grpcPort: 7200
          kvBudgetTokens: 8192
          threads: 6
          antiAffinity: hard
          resources: {requests: {cpu: "4", memory: 12Gi}, limits: {memory: 16Gi}}
        serviceMonitor:
          enabled: true
          labels: {release: prometheus}
        """;

    [HelmFact]
    public void Lint_passes_with_default_and_custom_values()
    {
        var lint = ProcessRunner.Run("helm", $"lint {ChartDirectory} --strict", TimeSpan.FromSeconds(60));
        Assert.True(lint.ExitCode == 0, lint.Tail());
        var values = WriteValues(CustomValues);
        try
        {
            var custom = ProcessRunner.Run("helm", $"lint {ChartDirectory} --strict --values {values}", TimeSpan.FromSeconds(60));
            Assert.True(custom.ExitCode == 0, custom.Tail());
        }
        finally
        {
            File.Delete(values);
        }
    }

    [HelmFact]
    public void Default_values_render_gateway_three_nodes_and_bundled_redis_with_a_demo_model()
    {
        var chart = Render(Release);

        var kinds = chart.Objects.Select(o => $"{Str(o, "kind")}/{Str(o, "metadata.name")}").Order(StringComparer.Ordinal).ToList();
        Assert.Equal(
            [$"Deployment/{Prefix}-gateway", $"Deployment/{Prefix}-redis",
             $"NetworkPolicy/{Prefix}-default-deny", $"NetworkPolicy/{Prefix}-gateway", $"NetworkPolicy/{Prefix}-node", $"NetworkPolicy/{Prefix}-redis",
             $"Secret/{Prefix}-join", $"Secret/{Prefix}-pool-ca", $"Secret/{Prefix}-redis-auth",
             $"Service/{Prefix}-gateway", $"Service/{Prefix}-gateway-pool", $"Service/{Prefix}-node",
             $"Service/{Prefix}-redis", $"StatefulSet/{Prefix}-node"],
            kinds);

        // Redis: the nodes and the gateway point at the bundled service's name and port.
        var redisService = chart.Get("Service", $"{Prefix}-redis");
        Assert.Equal("6379", Str(List(redisService, "spec.ports")[0], "port"));
        var redisPod = Map(chart.Get("Deployment", $"{Prefix}-redis"), "spec.template.spec");
        Assert.Equal("redis:7.0", Str(List(redisPod, "containers")[0], "image"));

        var gateway = chart.Get("Deployment", $"{Prefix}-gateway");
        Assert.Equal("1", Str(gateway, "spec.replicas"));
        var gatewayPod = Map(gateway, "spec.template.spec");
        var gatewayContainer = Named(gatewayPod, "containers", "gateway");
        Assert.Equal("potluck:0.1.0", Str(gatewayContainer, "image"));
        // Configured by environment (Potluck__Gateway__*, Potluck__Cluster__*), no computed flags.
        Assert.Null(At(gatewayContainer, "command"));
        Assert.Equal(["gateway"], Strings(gatewayContainer, "args"));
        Assert.Equal("/models/model.gguf", Env(gatewayContainer, "Potluck__Gateway__ModelPath"));
        Assert.Equal("8080", Env(gatewayContainer, "Potluck__Gateway__Port"));
        Assert.Equal($"{Prefix}-redis:6379", Env(gatewayContainer, "Potluck__Cluster__RedisConnectionString"));
        Assert.Equal("potluck", Env(gatewayContainer, "Potluck__Cluster__ClusterId"));
        Assert.Equal("potluck", Env(gatewayContainer, "Potluck__Gateway__ModelName"));
        Assert.Equal("$(POD_IP)", Env(gatewayContainer, "Potluck__Gateway__AdvertisedHost"));
        Assert.Equal("0.0.0.0", Env(gatewayContainer, "Potluck__Gateway__ListenAddress"));
        Assert.Equal("8080", Str(Named(gatewayContainer, "ports", "http"), "containerPort"));
        Assert.Equal("11110", Str(Named(gatewayContainer, "ports", "silo"), "containerPort"));
        foreach (var probe in new[] { "livenessProbe", "readinessProbe", "startupProbe" })
        {
            Assert.Equal("/healthz", Str(gatewayContainer, $"{probe}.httpGet.path"));
            Assert.Equal("http", Str(gatewayContainer, $"{probe}.httpGet.port"));
        }
        var gatewayService = chart.Get("Service", $"{Prefix}-gateway");
        Assert.Equal("ClusterIP", Str(gatewayService, "spec.type"));
        Assert.Equal("http", Str(List(gatewayService, "spec.ports")[0], "targetPort"));
        Assert.Equal("gateway", ComponentOf(gatewayService, "spec.selector"));

        var nodes = chart.Get("StatefulSet", $"{Prefix}-node");
        Assert.Equal("3", Str(nodes, "spec.replicas"));
        Assert.Equal($"{Prefix}-node", Str(nodes, "spec.serviceName"));
        Assert.Equal("None", Str(chart.Get("Service", $"{Prefix}-node"), "spec.clusterIP"));
        var nodePod = Map(nodes, "spec.template.spec");
        var node = Named(nodePod, "containers", "node");
        // The default spans fit the demo model's 8 layers; pod N takes span N from its index label, no script.
        Assert.Null(At(node, "command"));
        Assert.Equal(["node"], Strings(node, "args"));
        Assert.Equal("0:3 3:6 6:8", Env(node, "Potluck__Node__LayersByOrdinal"));
        Assert.Equal("metadata.labels['apps.kubernetes.io/pod-index']", Str(Named(node, "env", "Potluck__Node__Ordinal"), "valueFrom.fieldRef.fieldPath"));
        Assert.Equal("$(POD_IP)", Env(node, "Potluck__Node__AdvertisedHost"));
        Assert.Equal("7100", Env(node, "Potluck__Node__GrpcPort"));
        Assert.Equal("11111", Env(node, "Potluck__Node__SiloPort"));
        Assert.Equal($"{Prefix}-redis:6379", Env(node, "Potluck__Cluster__RedisConnectionString"));
        Assert.Equal("status.podIP", Str(Named(node, "env", "POD_IP"), "valueFrom.fieldRef.fieldPath"));
        Assert.Equal("7100", Str(Named(node, "ports", "grpc"), "containerPort"));
        Assert.Equal("grpc", Str(node, "readinessProbe.tcpSocket.port"));
        Assert.Equal("grpc", Str(node, "livenessProbe.tcpSocket.port"));

        // Soft anti-affinity spreads node pods over Kubernetes nodes by default.
        var preferred = List(nodePod, "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution");
        Assert.Equal("kubernetes.io/hostname", Str(preferred[0], "podAffinityTerm.topologyKey"));
        Assert.Equal("node", ComponentOf(preferred[0], "podAffinityTerm.labelSelector.matchLabels"));

        foreach (var (pod, container, modelPath) in new[]
                 {
                     (gatewayPod, gatewayContainer, Env(gatewayContainer, "Potluck__Gateway__ModelPath")),
                     (nodePod, node, Env(node, "Potluck__Node__ModelPath")),
                 })
        {
            AssertHardened(pod, container);
            // The demo init container writes exactly the file the main container reads, into the shared volume.
            var init = Named(pod, "initContainers", "create-demo-model");
            var initArgs = Strings(init, "args");
            Assert.Equal(["model", "create-demo", "--output", "/models/model.gguf"], initArgs);
            Assert.Equal(modelPath, FlagValue(initArgs, "--output"));
            Assert.Equal("/models", Str(Named(init, "volumeMounts", "model"), "mountPath"));
            Assert.Equal("/models", Str(Named(container, "volumeMounts", "model"), "mountPath"));
            Assert.Equal("True", Str(Named(container, "volumeMounts", "model"), "readOnly"), ignoreCase: true);
            Assert.NotNull(At(Named(pod, "volumes", "model"), "emptyDir"));
        }
    }

    [HelmFact]
    public void Custom_values_render_external_redis_pvc_model_spans_per_ordinal_and_a_service_monitor()
    {
        var chart = Render(Release, CustomValues);

        Assert.DoesNotContain(chart.Objects, o => Str(o, "metadata.name")!.EndsWith("-redis", StringComparison.Ordinal));
        var monitor = Assert.Single(chart.OfKind("ServiceMonitor"));
        Assert.Equal("prometheus", Str(monitor, "metadata.labels.release"));
        Assert.Equal("gateway", ComponentOf(monitor, "spec.selector.matchLabels"));
        Assert.Equal("http", Str(List(monitor, "spec.endpoints")[0], "port"));
        Assert.Equal("/metrics", Str(List(monitor, "spec.endpoints")[0], "path"));

        var gatewayService = chart.Get("Service", $"{Prefix}-gateway");
        Assert.Equal("LoadBalancer", Str(gatewayService, "spec.type"));
        Assert.Equal("80", Str(List(gatewayService, "spec.ports")[0], "port"));
        var gatewayPod = Map(chart.Get("Deployment", $"{Prefix}-gateway"), "spec.template.spec");
        var gateway = Named(gatewayPod, "containers", "gateway");
        Assert.Equal("registry.lab/potluck:1.2.3", Str(gateway, "image"));
        Assert.Equal("9000", Env(gateway, "Potluck__Gateway__Port"));
        Assert.Equal("9000", Str(Named(gateway, "ports", "http"), "containerPort"));
        Assert.Equal("redis.infra:6380,password=s3cret", Env(gateway, "Potluck__Cluster__RedisConnectionString"));
        Assert.Equal("lab-pool", Env(gateway, "Potluck__Cluster__ClusterId"));
        Assert.Equal("/models/qwen2.5-7b-q4_k_m.gguf", Env(gateway, "Potluck__Gateway__ModelPath"));
        Assert.Equal("16", Str(Named(gateway, "env", "Potluck__Gateway__MaxConcurrentSessions"), "value"));
        Assert.Equal("shared-models", Str(Named(gatewayPod, "volumes", "model"), "persistentVolumeClaim.claimName"));
        // The file is already on the claim: the only init container prepares the pool directory.
        Assert.Equal(["pool-init"], List(gatewayPod, "initContainers").Select(c => Str(c, "name")!));

        var nodes = chart.Get("StatefulSet", $"{Prefix}-node");
        Assert.Equal("4", Str(nodes, "spec.replicas"));
        var nodePod = Map(nodes, "spec.template.spec");
        var node = Named(nodePod, "containers", "node");
        Assert.Null(At(node, "command"));
        Assert.Equal("0-8 8-16 16-24 24-28", Env(node, "Potluck__Node__LayersByOrdinal"));
        Assert.Equal("7200", Env(node, "Potluck__Node__GrpcPort"));
        Assert.Equal("7200", Str(Named(node, "ports", "grpc"), "containerPort"));
        Assert.Equal("8192", Env(node, "Potluck__Node__KvBudgetTokens"));
        Assert.Equal("6", Env(node, "Potluck__Node__Threads"));
        Assert.Equal("redis.infra:6380,password=s3cret", Env(node, "Potluck__Cluster__RedisConnectionString"));
        Assert.Equal("12Gi", Str(node, "resources.requests.memory"));
        Assert.Equal("shared-models", Str(Named(nodePod, "volumes", "model"), "persistentVolumeClaim.claimName"));
        var required = List(nodePod, "affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution");
        Assert.Equal("kubernetes.io/hostname", Str(required[0], "topologyKey"));
        Assert.Null(At(nodePod, "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution"));
    }

    /// <summary>
    /// Binds the rendered pod environment, as the kubelet fills it in for pod N (its index label, pod IP and name), through
    /// the node's real configuration path (NodeOptions.FromConfiguration).
    /// </summary>
    [HelmFact]
    public void Node_pods_pick_their_span_from_the_statefulset_ordinal()
    {
        var chart = Render(Release, CustomValues);
        var node = Named(Map(chart.Get("StatefulSet", $"{Prefix}-node"), "spec.template.spec"), "containers", "node");

        var first = NodeOptions.FromConfiguration(PodConfiguration(node, 0));
        Assert.Equal((0, 8), (first.LayerStart, first.LayerEnd));
        var last = NodeOptions.FromConfiguration(PodConfiguration(node, 3));
        Assert.Equal((24, 28), (last.LayerStart, last.LayerEnd));
        Assert.Equal("/models/qwen2.5-7b-q4_k_m.gguf", last.ModelPath);
        Assert.Equal($"{Prefix}-node-3", last.ResolvedNodeId);
        Assert.Equal("https://10.1.0.3:7200", last.GrpcEndpoint);
        Assert.Equal("redis.infra:6380,password=s3cret", last.RedisConnectionString);
        Assert.Equal("lab-pool", last.ClusterId);
        Assert.Equal((8192L, 6), (last.KvBudgetTokens, last.Threads));

        // A pod beyond the listed spans (scaled up without updating nodes.layers) says why it stops.
        var beyond = Assert.Throws<NodeConfigurationException>(() => NodeOptions.FromConfiguration(PodConfiguration(node, 4)));
        Assert.Contains("no span for ordinal '4'", beyond.Message);
    }

    /// <summary>
    /// The container's environment for pod <paramref name="ordinal"/>: downward-API fields filled in, $(VAR) references
    /// expanded from earlier entries (as the kubelet does), then read like the environment-variable provider (__ is :).
    /// </summary>
    private static IConfiguration PodConfiguration(object container, int ordinal)
    {
        var values = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        foreach (var entry in List(container, "env").OfType<Dictionary<object, object>>())
        {
            var name = Str(entry, "name")!;
            var value = Str(entry, "valueFrom.fieldRef.fieldPath") switch
            {
                null => Str(entry, "value") ?? "",
                "status.podIP" => $"10.1.0.{ordinal}",
                "metadata.name" => $"{Prefix}-node-{ordinal}",
                "metadata.labels['apps.kubernetes.io/pod-index']" => ordinal.ToString(System.Globalization.CultureInfo.InvariantCulture),
                var other => throw new Xunit.Sdk.XunitException($"unexpected fieldRef {other} in {name}"),
            };
            foreach (var (earlier, earlierValue) in values) value = value.Replace($"$({earlier})", earlierValue, StringComparison.Ordinal);
            values[name] = value;
        }
        return new ConfigurationBuilder()
            .AddInMemoryCollection(values.Select(kv => new KeyValuePair<string, string?>(kv.Key.Replace("__", ":", StringComparison.Ordinal), kv.Value)))
            .Build();
    }

    private static string? Env(object container, string name) => Str(Named(container, "env", name), "value");

    [HelmFact]
    public void Inconsistent_values_fail_rendering_with_a_clear_message()
    {
        var mismatch = RunTemplate(Release, "nodes: {replicas: 3, layers: [\"0-4\", \"4-8\"]}");
        Assert.NotEqual(0, mismatch.ExitCode);
        Assert.Contains("nodes.layers lists 2 spans but nodes.replicas is 3", mismatch.Output);

        var badSpan = RunTemplate(Release, "nodes: {replicas: 1, layers: [\"0..8\"]}");
        Assert.NotEqual(0, badSpan.ExitCode);
        Assert.Contains("look like A:B", badSpan.Output);

        var noUrl = RunTemplate(Release, "model: {source: url}");
        Assert.NotEqual(0, noUrl.ExitCode);
        Assert.Contains("model.url is required", noUrl.Output);

        var noRedis = RunTemplate(Release, "redis: {enabled: false}");
        Assert.NotEqual(0, noRedis.ExitCode);
        Assert.Contains("redis.external.connectionString is required", noRedis.Output);

        var badSource = RunTemplate(Release, "model: {source: s3}");
        Assert.NotEqual(0, badSource.ExitCode);
        Assert.Contains("model.source must be demo, url, pvc or hostPath", badSource.Output);
    }

    [HelmFact]
    public void Url_and_hostPath_model_sources_render_their_volumes()
    {
        var url = Render(Release, """
            model: {source: url, url: "https://models.lab/m.gguf", sha256: "abc123"}
            """);
        var pod = Map(url.Get("StatefulSet", $"{Prefix}-node"), "spec.template.spec");
        var download = Named(pod, "initContainers", "download-model");
        Assert.Equal("https://models.lab/m.gguf", Str(Named(download, "env", "MODEL_URL"), "value"));
        Assert.Equal("abc123", Str(Named(download, "env", "MODEL_SHA256"), "value"));
        Assert.Contains("mv \"$target.part\" \"$target\"", Strings(download, "args")[0]);
        Assert.NotNull(At(Named(pod, "volumes", "model"), "emptyDir"));

        var hostPath = Render(Release, "model: {source: hostPath, hostPath: {path: /srv/llm}}\nnodes: {layers: []}");
        // No spans listed: plain `potluck node`, no span in its environment and no --layers.
        var plainNode = Named(Map(hostPath.Get("StatefulSet", $"{Prefix}-node"), "spec.template.spec"), "containers", "node");
        Assert.Null(At(plainNode, "command"));
        Assert.Equal("node", Strings(plainNode, "args")[0]);
        Assert.DoesNotContain("--layers", Strings(plainNode, "args"));
        Assert.DoesNotContain(List(plainNode, "env").OfType<Dictionary<object, object>>(), e => Str(e, "name")!.StartsWith("Potluck__Node__Layers", StringComparison.Ordinal));
        var gatewayPod = Map(hostPath.Get("Deployment", $"{Prefix}-gateway"), "spec.template.spec");
        Assert.Equal("/srv/llm", Str(Named(gatewayPod, "volumes", "model"), "hostPath.path"));
        Assert.Equal(["pool-init"], List(gatewayPod, "initContainers").Select(c => Str(c, "name")!));

        var createdClaim = Render(Release, "model: {source: pvc}");
        var claim = createdClaim.Get("PersistentVolumeClaim", $"{Prefix}-model");
        Assert.Equal("keep", AnnotationOf(claim, "helm.sh/resource-policy"));
        Assert.Equal($"{Prefix}-model", Str(Named(Map(createdClaim.Get("StatefulSet", $"{Prefix}-node"), "spec.template.spec"), "volumes", "model"),
            "persistentVolumeClaim.claimName"));
    }

    private static void AssertHardened(Dictionary<object, object> pod, Dictionary<object, object> container)
    {
        Assert.Equal("RuntimeDefault", Str(pod, "securityContext.seccompProfile.type"));
        Assert.Equal("true", Str(pod, "securityContext.runAsNonRoot"), ignoreCase: true);
        Assert.Equal("1654", Str(pod, "securityContext.runAsUser"));
        Assert.Equal("false", Str(container, "securityContext.allowPrivilegeEscalation"), ignoreCase: true);
        Assert.Equal("true", Str(container, "securityContext.readOnlyRootFilesystem"), ignoreCase: true);
        Assert.Equal(["ALL"], Strings(container, "securityContext.capabilities.drop"));
        // A read-only root needs a writable /tmp for .NET and POTLUCK_HOME.
        Assert.Equal("/tmp", Str(Named(container, "volumeMounts", "tmp"), "mountPath"));
        Assert.NotNull(At(Named(pod, "volumes", "tmp"), "emptyDir"));
        Assert.NotNull(At(container, "resources.requests.memory"));
        Assert.NotNull(At(container, "resources.limits.memory"));
    }

    // Label keys contain dots, which the dotted path helper cannot address.
    private static string? ComponentOf(object? node, string labelsPath) =>
        Map(node, labelsPath).TryGetValue("app.kubernetes.io/component", out var value) ? value.ToString() : null;

    private static string? AnnotationOf(object? node, string key) =>
        Map(node, "metadata.annotations").TryGetValue(key, out var value) ? value.ToString() : null;
}
