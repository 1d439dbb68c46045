namespace Potluck.Node;

/// <summary>How to run one node. The CLI's `potluck node` fills this in.</summary>
public sealed record NodeOptions
{
    /// <summary>The GGUF file; every node of a pool must hold the same file (checked by model id).</summary>
    public required string ModelPath { get; init; }

    /// <summary>First layer of the span (inclusive).</summary>
    public required int LayerStart { get; init; }

    /// <summary>Last layer of the span (exclusive).</summary>
    public required int LayerEnd { get; init; }

    /// <summary>Unique within the pool, no '/'. Default: node-{host}-{grpc port}.</summary>
    public string? NodeId { get; init; }

    /// <summary>Kestrel HTTP/2 port serving the Stage gRPC service.</summary>
    public int GrpcPort { get; init; } = 7100;

    /// <summary>Orleans silo-to-silo port; every silo must reach it.</summary>
    public int SiloPort { get; init; } = 11111;

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

    /// <summary>Total KV tokens of all sessions together; null lets the engine choose (4 full contexts).</summary>
    public long? KvBudgetTokens { get; init; }

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

    public string ResolvedNodeId => NodeId ?? $"node-{AdvertisedHost}-{GrpcPort}";

    public string GrpcEndpoint => $"http://{FormatHost(AdvertisedHost)}:{GrpcPort}";

    private static string FormatHost(string host) =>
        System.Net.IPAddress.TryParse(host, out var ip) && ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{host}]" : host;
}
