using System.Globalization;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using Potluck.Cluster;
using Potluck.Hosting;

namespace Potluck.Node;

/// <summary>
/// How to run one node, bound from configuration: section <see cref="ConfigurationSection"/> (environment variables
/// Potluck__Node__*) over the pool-wide section <see cref="ClusterSettings.ConfigurationSection"/> (Potluck__Cluster__*).
/// `potluck node` turns its flags into the same keys, layered over the environment.
/// </summary>
public sealed record NodeOptions
{
    /// <summary>Configuration section the node reads: environment variables Potluck__Node__ModelPath, ...</summary>
    public const string ConfigurationSection = "Potluck:Node";

    /// <summary>The GGUF file; every node of a pool must hold the same file (checked by model id).</summary>
    public required string ModelPath { get; init; }

    /// <summary>First layer of the span (inclusive).</summary>
    public required int LayerStart { get; init; }

    /// <summary>Last layer of the span (exclusive).</summary>
    public required int LayerEnd { get; init; }

    /// <summary>
    /// Unique within the pool, no '/'. Unset, a node process claims one (<see cref="Hosting.NodeIdClaim"/>): its pool
    /// certificate's, else the first free HOSTNAME-N on this machine.
    /// </summary>
    public string? NodeId { get; init; }

    /// <summary>Kestrel HTTP/2 port serving the Stage gRPC service; 0 picks a free one (the default outside containers).</summary>
    public int GrpcPort { get; init; } = Hosting.NodePorts.DefaultGrpcPort;

    /// <summary>Orleans silo-to-silo port; every silo must reach it; 0 picks a free one (the default outside containers).</summary>
    public int SiloPort { get; init; } = Hosting.NodePorts.DefaultSiloPort;

    /// <summary>Orleans client gateway port; 0 means this silo accepts no Orleans clients.</summary>
    public int GatewayPort { get; init; }

    /// <summary>
    /// Development clustering seed "host:port" (the primary silo's silo endpoint). Null with no Redis
    /// means this node is the primary itself.
    /// </summary>
    public string? PrimarySiloEndpoint { get; init; }

    /// <summary>Redis clustering, e.g. "127.0.0.1:6379"; takes precedence over the development seed.</summary>
    public string? RedisConnectionString { get; init; }

    /// <summary>Host or IP other nodes and the gateway use to reach this node's silo and gRPC ports.</summary>
    public string AdvertisedHost { get; init; } = "127.0.0.1";

    /// <summary>Address to bind; default loopback when advertising loopback, otherwise all interfaces.</summary>
    public string? ListenAddress { get; init; }

    /// <summary>Total KV tokens of all sessions together; null: <see cref="KvBudgetBytes"/>, or the default from free memory (see <see cref="Hosting.KvBudget"/>).</summary>
    public long? KvBudgetTokens { get; init; }

    /// <summary>Total KV bytes of all sessions together (converted at the span's bytes per token); ignored when <see cref="KvBudgetTokens"/> is set.</summary>
    public long? KvBudgetBytes { get; init; }

    /// <summary>Nodes started on this machine together (`serve` passes its count): the default KV budget divides free memory among them.</summary>
    public int NodesOnHost { get; init; } = 1;

    /// <summary>Compute threads; 0 means all cores.</summary>
    public int Threads { get; init; }

    /// <summary>Largest row count one step may carry (prefill chunk); sizes the gRPC message limit.</summary>
    public int MaxRowsPerStep { get; init; } = 512;

    /// <summary>Orleans cluster id; nodes and gateway of one pool share it.</summary>
    public string ClusterId { get; init; } = "potluck";

    /// <summary>How often the node reports its shard status to the pool directory.</summary>
    public TimeSpan ReportPeriod { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Tight membership probing for tests (dead silo noticed in about a second). Off by default: on a
    /// busy small machine it can evict healthy, slow silos.
    /// </summary>
    public bool FastFailureDetection { get; init; }

    /// <summary>
    /// Longest the node may take to join the pool (membership store reachable, silo up). Past it the node
    /// exits with a clear error instead of hanging on an unreachable seed or Redis.
    /// </summary>
    public TimeSpan StartupTimeout { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>
    /// Graceful leave: on SIGTERM the node refuses new sessions, reports itself draining and waits this long
    /// for open sessions to finish; sessions still open then are ended and the gateway re-routes them.
    /// A supervisor's grace period (Kubernetes terminationGracePeriodSeconds, compose stop_grace_period)
    /// must exceed it by the time the silo needs to leave (<see cref="ShutdownTimeout"/>).
    /// </summary>
    public TimeSpan DrainTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The whole shutdown's limit: the drain plus time to withdraw the shard and leave the cluster.</summary>
    public TimeSpan ShutdownTimeout => DrainTimeout + LeaveTimeout;

    /// <summary>What the shutdown allows after the drain: withdrawing the shard, Kestrel and the silo stopping.</summary>
    public static readonly TimeSpan LeaveTimeout = TimeSpan.FromSeconds(20);

    /// <summary>Where this node's pool credential comes from (section Potluck:Security).</summary>
    public PoolSecuritySettings Security { get; init; } = new();

    /// <summary>Warnings from reading the configuration (an old A-B span); the host prints them once.</summary>
    public IReadOnlyList<string> Warnings { get; init; } = [];

    /// <summary>
    /// The node id. A node process always has one (claimed at start); the fallback names in-process test hosts only.
    /// </summary>
    public string ResolvedNodeId => NodeId ?? $"node-{AdvertisedHost}-{GrpcPort}";

    public string GrpcEndpoint => $"https://{FormatHost(AdvertisedHost)}:{GrpcPort}";

    private static string FormatHost(string host) =>
        System.Net.IPAddress.TryParse(host, out var ip) && ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{host}]" : host;

    /// <summary>
    /// Options from section <see cref="ConfigurationSection"/> of <paramref name="configuration"/> (the root),
    /// e.g. environment variables Potluck__Node__ModelPath and Potluck__Node__Layers=0:4. ModelPath and the
    /// layers (Layers, or LayerStart and LayerEnd) are required; everything else keeps its default.
    /// </summary>
    /// <exception cref="NodeConfigurationException">A required key is missing or a value does not parse.</exception>
    public static NodeOptions FromConfiguration(IConfiguration configuration) => FromConfiguration(configuration, layersRequired: true);

    /// <param name="layersRequired">
    /// False when the span may be chosen later (joining by the gateway's URL): without layers the result holds the
    /// placeholder span [0, 1); <see cref="HasLayers"/> tells which.
    /// </param>
    public static NodeOptions FromConfiguration(IConfiguration configuration, bool layersRequired)
    {
        var section = configuration.GetSection(ConfigurationSection);
        if (string.IsNullOrWhiteSpace(section[nameof(ModelPath)]))
            throw new NodeConfigurationException($"{Describe(section, nameof(ModelPath))} is required: the GGUF file this node serves");
        if (layersRequired && !HasLayers(configuration))
            throw new NodeConfigurationException($"{Describe(section, "Layers")} is required, as {LayerRange.Rule}");
        var options = new NodeOptions { ModelPath = "", LayerStart = 0, LayerEnd = 1 }.WithConfiguration(configuration);
        var invalid = new NodeOptionsValidator().Validate(null, options);
        if (invalid.Failed) throw new NodeConfigurationException(invalid.FailureMessage);
        return options;
    }

    /// <summary>Whether the configuration names a span (Layers, or LayerStart and LayerEnd).</summary>
    public static bool HasLayers(IConfiguration configuration)
    {
        var section = configuration.GetSection(ConfigurationSection);
        return !string.IsNullOrWhiteSpace(section["Layers"]) || !string.IsNullOrWhiteSpace(section["LayersByOrdinal"])
            || (!string.IsNullOrWhiteSpace(section[nameof(LayerStart)]) && !string.IsNullOrWhiteSpace(section[nameof(LayerEnd)]));
    }

    /// <summary>Whether <paramref name="key"/> (a property name) is set under the node's section or, for pool-wide keys, the cluster's.</summary>
    public static bool IsSet(IConfiguration configuration, string key) =>
        ReadString(configuration.GetSection(ConfigurationSection), key) is not null
        || (ClusterSettings.Keys.Contains(key) && ReadString(configuration.GetSection(ClusterSettings.ConfigurationSection), key) is not null);

    /// <summary>
    /// A copy of these options with every key present in section <see cref="ConfigurationSection"/> applied
    /// over them; absent keys keep this instance's values. The CLI applies its flags over the result.
    /// </summary>
    /// <exception cref="NodeConfigurationException">A value does not parse.</exception>
    public NodeOptions WithConfiguration(IConfiguration configuration)
    {
        var section = configuration.GetSection(ConfigurationSection);
        var options = this;
        // Pool-wide settings first (Potluck:Cluster), so the node's own section can override them.
        var cluster = ClusterSettings.FromConfiguration(configuration, new ClusterSettings(options.ClusterId, options.RedisConnectionString,
            options.PrimarySiloEndpoint, options.FastFailureDetection));
        options = options with
        {
            ClusterId = cluster.ClusterId,
            RedisConnectionString = cluster.RedisConnectionString,
            PrimarySiloEndpoint = cluster.PrimarySiloEndpoint,
            FastFailureDetection = cluster.FastFailureDetection,
        };
        // Join=HOST:PORT is a seed silo; Join=http://... is the gateway's URL, which joining (NodeJoinOptions) handles.
        if (ReadString(section, "Join") is { } join && !Joining.PoolJoinClient.IsGatewayUrl(join))
            options = options with { PrimarySiloEndpoint = join };
        if (ReadString(section, nameof(ModelPath)) is { } modelPath) options = options with { ModelPath = modelPath };
        if (ReadString(section, "Layers") is { } layers)
        {
            var (start, end) = options.ParseLayers(layers, () => Describe(section, "Layers"), out options);
            options = options with { LayerStart = start, LayerEnd = end };
        }
        else
        {
            options = options with
            {
                LayerStart = ReadInt(section, nameof(LayerStart), options.LayerStart, 0, int.MaxValue),
                LayerEnd = ReadInt(section, nameof(LayerEnd), options.LayerEnd, 1, int.MaxValue),
            };
            // A span listed per StatefulSet ordinal (Helm): pod N takes the Nth entry.
            if (ReadString(section, "LayersByOrdinal") is { } spans) options = options.WithOrdinalSpan(section, spans);
            if (options.LayerEnd <= options.LayerStart)
                throw new NodeConfigurationException($"{Describe(section, nameof(LayerEnd))} ({options.LayerEnd}) must be greater than LayerStart ({options.LayerStart})");
        }
        return options with
        {
            NodeId = ReadString(section, nameof(NodeId)) ?? options.NodeId,
            GrpcPort = ReadInt(section, nameof(GrpcPort), options.GrpcPort, 0, 65535),
            SiloPort = ReadInt(section, nameof(SiloPort), options.SiloPort, 0, 65535),
            GatewayPort = ReadInt(section, nameof(GatewayPort), options.GatewayPort, 0, 65535),
            PrimarySiloEndpoint = ReadString(section, nameof(PrimarySiloEndpoint)) ?? options.PrimarySiloEndpoint,
            RedisConnectionString = ReadString(section, nameof(RedisConnectionString)) ?? options.RedisConnectionString,
            AdvertisedHost = ReadString(section, nameof(AdvertisedHost)) ?? options.AdvertisedHost,
            ListenAddress = ReadString(section, nameof(ListenAddress)) ?? options.ListenAddress,
            KvBudgetTokens = section[nameof(KvBudgetTokens)] is null ? options.KvBudgetTokens : ReadLong(section, nameof(KvBudgetTokens), 1),
            KvBudgetBytes = section[nameof(KvBudgetBytes)] is null ? options.KvBudgetBytes : ReadLong(section, nameof(KvBudgetBytes), 1),
            NodesOnHost = ReadInt(section, nameof(NodesOnHost), options.NodesOnHost, 1, 4096),
            Threads = ReadInt(section, nameof(Threads), options.Threads, 0, 4096),
            MaxRowsPerStep = ReadInt(section, nameof(MaxRowsPerStep), options.MaxRowsPerStep, 1, 1 << 20),
            ClusterId = ReadString(section, nameof(ClusterId)) ?? options.ClusterId,
            ReportPeriod = ReadDuration(section, nameof(ReportPeriod), options.ReportPeriod),
            FastFailureDetection = ReadBool(section, nameof(FastFailureDetection), options.FastFailureDetection),
            StartupTimeout = ReadDuration(section, nameof(StartupTimeout), options.StartupTimeout),
            DrainTimeout = ReadDuration(section, nameof(DrainTimeout), options.DrainTimeout),
            Security = PoolSecuritySettings.FromConfiguration(configuration, options.Security),
        };
    }

    /// <summary>LayersByOrdinal "0:3 3:6 6:8" and Ordinal N: the Nth span (Kubernetes gives a StatefulSet pod its index).</summary>
    private NodeOptions WithOrdinalSpan(IConfigurationSection section, string spans)
    {
        var list = spans.Split([' ', ',', ';'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (ReadString(section, "Ordinal") is not { } ordinalText)
            throw new NodeConfigurationException($"{Describe(section, "LayersByOrdinal")} needs {Describe(section, "Ordinal")}, the pod's index");
        if (!int.TryParse(ordinalText, NumberStyles.None, CultureInfo.InvariantCulture, out var ordinal))
            throw new NodeConfigurationException($"{Describe(section, "Ordinal")} is '{ordinalText}': expected the pod's index, 0 or more");
        if (ordinal >= list.Length)
            throw new NodeConfigurationException($"no span for ordinal '{ordinal}' in {Describe(section, "LayersByOrdinal")} ('{spans}'): " +
                "list one span per node, or scale the nodes down");
        var (start, end) = ParseLayers(list[ordinal], () => Describe(section, "LayersByOrdinal"), out var options);
        return options with { LayerStart = start, LayerEnd = end };
    }

    /// <summary>Parses "A:B" (or the old "A-B"), layers [A, B) with 0 &lt;= A &lt; B.</summary>
    public static bool TryParseLayers(string text, out int start, out int end) => LayerRange.TryParse(text, out start, out end, out _);

    // An old A-B value still works; the warning (printed at start) says what it means.
    private (int Start, int End) ParseLayers(string text, Func<string> where, out NodeOptions withWarnings)
    {
        var trimmed = text.Trim();
        if (!LayerRange.TryParse(trimmed, out var start, out var end, out var legacy))
            throw new NodeConfigurationException($"{where()} is '{text}': expected {LayerRange.Rule}");
        withWarnings = legacy ? this with { Warnings = [.. Warnings, LayerRange.LegacyWarning(where(), trimmed, start, end)] } : this;
        return (start, end);
    }

    // Names the key both ways so the message points at whatever the operator actually set.
    internal static string Describe(IConfigurationSection section, string key) =>
        $"{section.Path}:{key} (environment variable {section.Path.Replace(":", "__", StringComparison.Ordinal)}__{key})";

    // Empty means "not set": compose files often pass VAR= for optional settings.
    internal static string? ReadString(IConfigurationSection section, string key) =>
        string.IsNullOrWhiteSpace(section[key]) ? null : section[key]!.Trim();

    private static int ReadInt(IConfigurationSection section, string key, int fallback, int min, int max)
    {
        if (ReadString(section, key) is not { } text) return fallback;
        if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value >= min && value <= max) return value;
        throw new NodeConfigurationException($"{Describe(section, key)} is '{text}': expected an integer from {min} to {max}");
    }

    private static long? ReadLong(IConfigurationSection section, string key, long min)
    {
        if (ReadString(section, key) is not { } text) return null;
        if (long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value >= min) return value;
        throw new NodeConfigurationException($"{Describe(section, key)} is '{text}': expected an integer of at least {min}");
    }

    internal static bool ReadBool(IConfigurationSection section, string key, bool fallback)
    {
        if (ReadString(section, key) is not { } text) return fallback;
        if (bool.TryParse(text, out var value)) return value;
        if (text is "1" or "0") return text == "1";
        throw new NodeConfigurationException($"{Describe(section, key)} is '{text}': expected true or false");
    }

    /// <summary>A duration as "00:00:02" (TimeSpan) or a number of seconds ("2", "0.5").</summary>
    private static TimeSpan ReadDuration(IConfigurationSection section, string key, TimeSpan fallback)
    {
        if (ReadString(section, key) is not { } text) return fallback;
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) && seconds > 0 && seconds < TimeSpan.MaxValue.TotalSeconds)
            return TimeSpan.FromSeconds(seconds);
        if (TimeSpan.TryParse(text, CultureInfo.InvariantCulture, out var value) && value > TimeSpan.Zero) return value;
        throw new NodeConfigurationException($"{Describe(section, key)} is '{text}': expected a positive duration (seconds, or hh:mm:ss)");
    }
}

/// <summary>The node's configuration is missing a required value or has one that does not parse: a usage error (exit 2).</summary>
public sealed class NodeConfigurationException(string message) : ConfigurationUsageException(message);

/// <summary>What a node's options must satisfy beyond each value parsing on its own.</summary>
public sealed class NodeOptionsValidator : IValidateOptions<NodeOptions>
{
    public ValidateOptionsResult Validate(string? name, NodeOptions options)
    {
        var failures = new List<string>();
        if (string.IsNullOrWhiteSpace(options.ModelPath)) failures.Add("ModelPath is required: the GGUF file this node serves");
        if (options.NodesOnHost < 1) failures.Add("NodesOnHost must be at least 1");
        if (options.LayerStart < 0 || options.LayerEnd <= options.LayerStart)
            failures.Add($"the span {LayerRange.Format(options.LayerStart, options.LayerEnd)} is empty: LayerEnd must be greater than LayerStart");
        if (options.NodeId is { } id && (id.Length == 0 || id.Contains('/', StringComparison.Ordinal)))
            failures.Add($"NodeId '{id}' must be non-empty and without '/'");
        if (options.ListenAddress is { } listen && !IsBindAddress(listen))
            failures.Add($"ListenAddress '{listen}' is not an IP address to bind (0.0.0.0 binds all interfaces)");
        if (string.IsNullOrWhiteSpace(options.AdvertisedHost)) failures.Add("AdvertisedHost is required: the address the pool dials this node at");
        if (options.PrimarySiloEndpoint is { } seed && !ClusterSettings.IsHostPort(seed))
            failures.Add($"PrimarySiloEndpoint '{seed}' is not HOST:PORT (the seed silo)");
        if (options.DrainTimeout > TimeSpan.FromDays(1)) failures.Add($"DrainTimeout {options.DrainTimeout} is longer than a day");
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    private static bool IsBindAddress(string text) =>
        text is "*" or "+" or "localhost" || System.Net.IPAddress.TryParse(text.Trim('[', ']'), out _);
}
