using static Potluck.Deploy.Tests.RenderedChart;

namespace Potluck.Deploy.Tests;

/// <summary>helm lint and helm template of helm/potluck, with the rendered objects parsed and checked.</summary>
[ProcessTest]
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

        var kinds = chart.Objects.Select(o => $"{Str(o, "kind")}/{Str(o, "metadata.name")}").Order().ToList();
        Assert.Equal(
            [$"Deployment/{Prefix}-gateway", $"Deployment/{Prefix}-redis", $"Service/{Prefix}-gateway", $"Service/{Prefix}-node",
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
        var gatewayArgs = Strings(gatewayContainer, "args");
        Assert.Equal("gateway", gatewayArgs[0]);
        Assert.Equal("/models/model.gguf", FlagValue(gatewayArgs, "--model"));
        Assert.Equal("8080", FlagValue(gatewayArgs, "--port"));
        Assert.Equal($"{Prefix}-redis:6379", FlagValue(gatewayArgs, "--redis"));
        Assert.Equal("potluck", FlagValue(gatewayArgs, "--cluster-id"));
        Assert.Equal("potluck", FlagValue(gatewayArgs, "--model-name"));
        Assert.Equal("$(POD_IP)", FlagValue(gatewayArgs, "--advertise"));
        Assert.Equal("0.0.0.0", FlagValue(gatewayArgs, "--host"));
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
        // The default spans fit the demo model's 8 layers; pod N takes span N through the ordinal script.
        Assert.Equal(["/bin/bash", "-c"], Strings(node, "command"));
        Assert.Equal("0-3 3-6 6-8", Str(Named(node, "env", "LAYERS_BY_ORDINAL"), "value"));
        var nodeArgs = Strings(node, "args");
        Assert.Equal(["potluck", "node"], nodeArgs[1..3]);
        Assert.Equal("$(POD_IP)", FlagValue(nodeArgs, "--host"));
        Assert.Equal("7100", FlagValue(nodeArgs, "--port"));
        Assert.Equal("11111", FlagValue(nodeArgs, "--silo-port"));
        Assert.Equal($"{Prefix}-redis:6379", FlagValue(nodeArgs, "--redis"));
        Assert.Equal("status.podIP", Str(Named(node, "env", "POD_IP"), "valueFrom.fieldRef.fieldPath"));
        Assert.Equal("7100", Str(Named(node, "ports", "grpc"), "containerPort"));
        Assert.Equal("grpc", Str(node, "readinessProbe.tcpSocket.port"));
        Assert.Equal("grpc", Str(node, "livenessProbe.tcpSocket.port"));

        // Soft anti-affinity spreads node pods over Kubernetes nodes by default.
        var preferred = List(nodePod, "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution");
        Assert.Equal("kubernetes.io/hostname", Str(preferred[0], "podAffinityTerm.topologyKey"));
        Assert.Equal("node", ComponentOf(preferred[0], "podAffinityTerm.labelSelector.matchLabels"));

        foreach (var (pod, container, modelArgs) in new[] { (gatewayPod, gatewayContainer, gatewayArgs), (nodePod, node, nodeArgs) })
        {
            AssertHardened(pod, container);
            // The demo init container writes exactly the file the main container reads, into the shared volume.
            var init = Named(pod, "initContainers", "create-demo-model");
            var initArgs = Strings(init, "args");
            Assert.Equal(["model", "create-demo", "--output", "/models/model.gguf"], initArgs);
            Assert.Equal(FlagValue(modelArgs, "--model"), FlagValue(initArgs, "--output"));
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
        var gatewayArgs = Strings(gateway, "args");
        Assert.Equal("9000", FlagValue(gatewayArgs, "--port"));
        Assert.Equal("9000", Str(Named(gateway, "ports", "http"), "containerPort"));
        Assert.Equal("redis.infra:6380,password=s3cret", FlagValue(gatewayArgs, "--redis"));
        Assert.Equal("lab-pool", FlagValue(gatewayArgs, "--cluster-id"));
        Assert.Equal("/models/qwen2.5-7b-q4_k_m.gguf", FlagValue(gatewayArgs, "--model"));
        Assert.Equal("16", Str(Named(gateway, "env", "Potluck__Gateway__MaxConcurrentSessions"), "value"));
        Assert.Equal("shared-models", Str(Named(gatewayPod, "volumes", "model"), "persistentVolumeClaim.claimName"));
        Assert.Null(At(gatewayPod, "initContainers")); // the file is already on the claim

        var nodes = chart.Get("StatefulSet", $"{Prefix}-node");
        Assert.Equal("4", Str(nodes, "spec.replicas"));
        var nodePod = Map(nodes, "spec.template.spec");
        var node = Named(nodePod, "containers", "node");
        Assert.Equal(["/bin/bash", "-c"], Strings(node, "command"));
        Assert.Equal("0-8 8-16 16-24 24-28", Str(Named(node, "env", "LAYERS_BY_ORDINAL"), "value"));
        var nodeArgs = Strings(node, "args");
        Assert.Equal("7200", FlagValue(nodeArgs, "--port"));
        Assert.Equal("7200", Str(Named(node, "ports", "grpc"), "containerPort"));
        Assert.Equal("8192", FlagValue(nodeArgs, "--kv-tokens"));
        Assert.Equal("6", FlagValue(nodeArgs, "--threads"));
        Assert.Equal("redis.infra:6380,password=s3cret", FlagValue(nodeArgs, "--redis"));
        Assert.Equal("12Gi", Str(node, "resources.requests.memory"));
        Assert.Equal("shared-models", Str(Named(nodePod, "volumes", "model"), "persistentVolumeClaim.claimName"));
        var required = List(nodePod, "affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution");
        Assert.Equal("kubernetes.io/hostname", Str(required[0], "topologyKey"));
        Assert.Null(At(nodePod, "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution"));
    }

    /// <summary>Runs the rendered ordinal script in bash with a stand-in `potluck` that prints its arguments.</summary>
    [HelmFact]
    public void Node_pods_pick_their_span_from_the_statefulset_ordinal()
    {
        var chart = Render(Release, CustomValues);
        var node = Named(Map(chart.Get("StatefulSet", $"{Prefix}-node"), "spec.template.spec"), "containers", "node");
        var args = Strings(node, "args");
        var script = args[0];
        var layers = Str(Named(node, "env", "LAYERS_BY_ORDINAL"), "value")!;

        var bin = Directory.CreateTempSubdirectory("potluck-fake-bin");
        try
        {
            var fake = Path.Combine(bin.FullName, "potluck");
            File.WriteAllText(fake, "#!/bin/bash\nprintf '%s\\n' \"$@\"\n");
            File.SetUnixFileMode(fake, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            string RunAs(string hostname, out int exitCode)
            {
                var start = ChildProcess.StartInfo("bash", ["-c", script, .. args.Skip(1)], new Dictionary<string, string>
                {
                    ["PATH"] = $"{bin.FullName}:/usr/bin:/bin",
                    ["HOSTNAME"] = hostname,
                    ["LAYERS_BY_ORDINAL"] = layers,
                });
                var run = ProcessRunner.Run(start, TimeSpan.FromSeconds(10)); // throws if the ordinal script hangs
                exitCode = run.ExitCode;
                return run.StandardOutput + run.StandardError;
            }

            var first = RunAs($"{Prefix}-node-0", out var firstExit).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(0, firstExit);
            Assert.Equal("node", first[0]);
            Assert.Equal("0-8", FlagValue(first, "--layers"));
            var last = RunAs($"{Prefix}-node-3", out var lastExit).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(0, lastExit);
            Assert.Equal("24-28", FlagValue(last, "--layers"));
            Assert.Equal("/models/qwen2.5-7b-q4_k_m.gguf", FlagValue(last, "--model"));

            // A pod beyond the listed spans (scaled up without updating nodes.layers) says why it stops.
            var beyond = RunAs($"{Prefix}-node-4", out var beyondExit);
            Assert.NotEqual(0, beyondExit);
            Assert.Contains("no span for ordinal '4'", beyond);
        }
        finally
        {
            bin.Delete(recursive: true);
        }
    }

    [HelmFact]
    public void Inconsistent_values_fail_rendering_with_a_clear_message()
    {
        var mismatch = RunTemplate(Release, "nodes: {replicas: 3, layers: [\"0-4\", \"4-8\"]}");
        Assert.NotEqual(0, mismatch.ExitCode);
        Assert.Contains("nodes.layers lists 2 spans but nodes.replicas is 3", mismatch.Output);

        var badSpan = RunTemplate(Release, "nodes: {replicas: 1, layers: [\"0:8\"]}");
        Assert.NotEqual(0, badSpan.ExitCode);
        Assert.Contains("look like A-B", badSpan.Output);

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
        // No spans listed: plain `potluck node` arguments, no ordinal script and no --layers.
        var plainNode = Named(Map(hostPath.Get("StatefulSet", $"{Prefix}-node"), "spec.template.spec"), "containers", "node");
        Assert.Null(At(plainNode, "command"));
        Assert.Equal("node", Strings(plainNode, "args")[0]);
        Assert.DoesNotContain("--layers", Strings(plainNode, "args"));
        var gatewayPod = Map(hostPath.Get("Deployment", $"{Prefix}-gateway"), "spec.template.spec");
        Assert.Equal("/srv/llm", Str(Named(gatewayPod, "volumes", "model"), "hostPath.path"));
        Assert.Null(At(gatewayPod, "initContainers"));

        var createdClaim = Render(Release, "model: {source: pvc}");
        var claim = createdClaim.Get("PersistentVolumeClaim", $"{Prefix}-model");
        Assert.Equal("keep", AnnotationOf(claim, "helm.sh/resource-policy"));
        Assert.Equal($"{Prefix}-model", Str(Named(Map(createdClaim.Get("StatefulSet", $"{Prefix}-node"), "spec.template.spec"), "volumes", "model"),
            "persistentVolumeClaim.claimName"));
    }

    private static void AssertHardened(Dictionary<object, object> pod, Dictionary<object, object> container)
    {
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
