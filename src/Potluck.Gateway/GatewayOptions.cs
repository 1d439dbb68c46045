using Potluck.Protocol.V1;

namespace Potluck.Gateway;

/// <summary>How to run the gateway. The CLI's `potluck gateway` and `potluck serve` fill this in.</summary>
public sealed record GatewayOptions
{
    /// <summary>The GGUF file; only its head tensors (embedding, final norm, LM head) and tokenizer are used.</summary>
    public required string ModelPath { get; init; }

    /// <summary>Address the HTTP API listens on.</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>HTTP port of the OpenAI API; 0 picks a free port (read it from <see cref="GatewayApp.BaseAddress"/>).</summary>
    public int Port { get; init; } = 8080;

    /// <summary>Orleans silo-to-silo port; every node must reach it.</summary>
    public int SiloPort { get; init; } = 11110;

    /// <summary>Orleans client gateway port; 0 means no Orleans clients are accepted.</summary>
    public int GatewayPort { get; init; }

    /// <summary>Development clustering seed "host:port"; null with no Redis makes the gateway the primary silo.</summary>
    public string? PrimarySiloEndpoint { get; init; }

    /// <summary>Redis clustering, e.g. "127.0.0.1:6379"; takes precedence over the development seed.</summary>
    public string? RedisConnectionString { get; init; }

    /// <summary>Host other silos use to reach this silo.</summary>
    public string AdvertisedHost { get; init; } = "127.0.0.1";

    /// <summary>Orleans cluster id shared with the nodes.</summary>
    public string ClusterId { get; init; } = "potluck";

    /// <summary>Hidden-state type on the wire: F16 halves the bytes; F32 is bit-exact with a single process.</summary>
    public HiddenType WireType { get; init; } = HiddenType.F16;

    /// <summary>Largest accepted request body; bigger ones get 413.</summary>
    public long MaxBodyBytes { get; init; } = 4 * 1024 * 1024;

    /// <summary>Threads for the head (embedding and LM head); 0 means all cores.</summary>
    public int Threads { get; init; }

    /// <summary>Rows per prefill step; must not exceed the nodes' max_rows_per_step.</summary>
    public int PrefillChunkRows { get; init; } = 512;

    /// <summary>Longest wait for one step's answer from the route before the stage is treated as failed.</summary>
    public TimeSpan StepTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>How often the pool view is refreshed from the pool directory.</summary>
    public TimeSpan PoolRefreshPeriod { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Generations running at once; more wait in line (each holds KV on every stage).</summary>
    public int MaxConcurrentSessions { get; init; } = 64;

    /// <summary>Name the API serves the model under; null uses general.name or the file name.</summary>
    public string? ModelName { get; init; }

    /// <summary>Tight membership probing (tests only: it can evict slow silos on a busy machine).</summary>
    public bool FastFailureDetection { get; init; }

    /// <summary>Node id of the gateway silo in the pool (silo metadata); never holds shards.</summary>
    public string GatewayId { get; init; } = $"gateway-{Environment.ProcessId}";
}
