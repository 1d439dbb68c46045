using System.Globalization;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using Potluck.Gateway.Access;
using Potluck.Hosting;
using Potluck.Protocol.V1;

namespace Potluck.Gateway;

/// <summary>
/// How to run the gateway, bound from configuration: section <see cref="ConfigurationSection"/> (environment variables
/// Potluck__Gateway__*) over the pool-wide <see cref="ClusterSettings.ConfigurationSection"/> (Potluck__Cluster__*).
/// `potluck gateway` turns its flags into the same keys, layered over the environment.
/// </summary>
public sealed record GatewayOptions
{
    /// <summary>Configuration section the gateway reads: environment variables Potluck__Gateway__ModelPath, ...</summary>
    public const string ConfigurationSection = "Potluck:Gateway";

    /// <summary>The GGUF file; only its head tensors (embedding, final norm, LM head) and tokenizer are used.</summary>
    public required string ModelPath { get; init; }

    /// <summary>Address the HTTP API binds (0.0.0.0: all interfaces); also the silo's unless <see cref="SiloListenAddress"/> is set.</summary>
    public string ListenAddress { get; init; } = "127.0.0.1";

    /// <summary>HTTP port of the OpenAI API; 0 picks a free port (read it from <see cref="GatewayApp.BaseAddress"/>).</summary>
    public int Port { get; init; } = 8080;

    /// <summary>
    /// HTTPS port of the pool endpoint (enrolment with invite tokens, renewal, the members' join document), bound like the
    /// API (<see cref="ListenAddress"/>). Null: <see cref="DefaultPoolPort"/>, or a free port when <see cref="Port"/> is 0 (tests).
    /// </summary>
    public int? PoolPort { get; init; }

    public const int DefaultPoolPort = 7443;

    public int ResolvedPoolPort => PoolPort ?? (Port == 0 ? 0 : DefaultPoolPort);

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

    /// <summary>
    /// Most characters of prompt text (all message contents, or the completion prompt) accepted before tokenizing;
    /// more get 400 context_length_exceeded without touching the tokenizer. Null: 16 per token of the model's context.
    /// </summary>
    public int? MaxPromptCharacters { get; init; }

    /// <summary>Longest a prompt may take to tokenize (off the request thread); longer gets 400 prompt_too_long.</summary>
    public TimeSpan TokenizeTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Threads for the head (embedding and LM head); 0 means all cores.</summary>
    public int Threads { get; init; }

    /// <summary>Rows per prefill step; must not exceed the nodes' max_rows_per_step.</summary>
    public int PrefillChunkRows { get; init; } = 512;

    /// <summary>Longest wait for one step's answer from the route before the stage is treated as failed.</summary>
    public TimeSpan StepTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// How long a generation whose stages ran out of KV waits for room (having given its own KV back) before the
    /// request fails with 429.
    /// </summary>
    public TimeSpan KvWaitTimeout { get; init; } = TimeSpan.FromSeconds(120);

    /// <summary>How often the pool view is refreshed from the pool directory.</summary>
    public TimeSpan PoolRefreshPeriod { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Generations running at once; more wait in line (each holds KV on every stage).</summary>
    public int MaxConcurrentSessions { get; init; } = 64;

    /// <summary>Requests that may wait for a generation slot; one more is refused at once (429, the pool is at capacity).</summary>
    public int MaxQueuedRequests { get; init; } = 256;

    /// <summary>Longest a request waits for a generation slot before it is refused (429).</summary>
    public TimeSpan QueueTimeout { get; init; } = TimeSpan.FromSeconds(120);

    /// <summary>
    /// A streaming request that has waited this long starts its event stream and gets an SSE comment this often until
    /// admitted, so clients and proxies with idle timeouts keep the connection.
    /// </summary>
    public TimeSpan QueueKeepAliveInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Name the API serves the model under; null uses general.name or the file name.</summary>
    public string? ModelName { get; init; }

    /// <summary>Tight membership probing (tests only: it can evict slow silos on a busy machine).</summary>
    public bool FastFailureDetection { get; init; }

    /// <summary>The pool authority this gateway holds (section Potluck:Security; created on first start).</summary>
    public PoolSecuritySettings Security { get; init; } = new();

    /// <summary>Node id of the gateway silo in the pool (silo metadata); never holds shards.</summary>
    public string GatewayId { get; init; } = $"gateway-{Environment.ProcessId}";

    // ---- Access control and safe defaults (src/Potluck.Gateway/Access) ----

    /// <summary>Environment variable with more API keys, comma separated (added to <see cref="ApiKeys"/>).</summary>
    public const string ApiKeysEnvironmentVariable = "POTLUCK_API_KEYS";

    /// <summary>
    /// Keys the OpenAI API accepts (Authorization: Bearer, or x-api-key). None, and no <see cref="ApiKeysFile"/>: the
    /// API is open, which only a loopback <see cref="ListenAddress"/> (or <see cref="Insecure"/>) allows.
    /// </summary>
    public IReadOnlyList<string> ApiKeys { get; init; } = [];

    /// <summary>A file of API keys, one a line: <c>[NAME:]KEY [rpm=N] [concurrency=N]</c>, '#' starts a comment.</summary>
    public string? ApiKeysFile { get; init; }

    /// <summary>The key of the operator endpoints and the dashboard; API keys never grant them.</summary>
    public string? AdminKey { get; init; }

    /// <summary>A file whose first non-comment line is the admin key (instead of <see cref="AdminKey"/>).</summary>
    public string? AdminKeyFile { get; init; }

    /// <summary>Origins allowed to call the API from a browser (CORS); none turns CORS off.</summary>
    public IReadOnlyList<string> CorsOrigins { get; init; } = [];

    /// <summary>Host names the API answers to (HostFiltering; the loopback names are always allowed); none: see docs/cli.md.</summary>
    public IReadOnlyList<string> AllowedHosts { get; init; } = [];

    /// <summary>PEM certificate (with its chain) for HTTPS on the API port; needs <see cref="TlsKeyFile"/>.</summary>
    public string? TlsCertificateFile { get; init; }

    /// <summary>PEM private key of <see cref="TlsCertificateFile"/>.</summary>
    public string? TlsKeyFile { get; init; }

    /// <summary>Serves HTTPS with this source's certificate when no PEM files are given (a pool-CA certificate; not from configuration).</summary>
    public IApiCertificateSource? ApiCertificate { get; init; }

    /// <summary>Allows an open API and open operator endpoints on a non-loopback address (logs a warning on every start).</summary>
    public bool Insecure { get; init; }

    /// <summary>Requests per minute per key (per client IP when the API is open); 0 is no limit.</summary>
    public int RateLimitPerMinute { get; init; } = 600;

    /// <summary>
    /// Requests at once per key (per client IP when the API is open); 0 is no limit. The default matches
    /// <see cref="MaxConcurrentSessions"/>: one SDK fanning out may use every slot, and beyond them admission is fair between keys.
    /// </summary>
    public int ConcurrencyLimit { get; init; } = 64;

    /// <summary>Address the silo binds; null: <see cref="ListenAddress"/>, so nothing listens beyond what the operator chose.</summary>
    public string? SiloListenAddress { get; init; }

    /// <summary>The main settings, never a key (the generated record ToString would print AdminKey).</summary>
    public override string ToString() =>
        $"GatewayOptions {{ ModelPath = {ModelPath}, ListenAddress = {ListenAddress}, Port = {Port}, SiloPort = {SiloPort}, AdvertisedHost = {AdvertisedHost}, " +
        $"ClusterId = {ClusterId}, ApiKeys = {ApiKeys.Count}, ApiKeysFile = {ApiKeysFile}, AdminKey = {(string.IsNullOrEmpty(AdminKey) ? "none" : "set")}, Insecure = {Insecure} }}";

    /// <summary>
    /// Options from section <see cref="ConfigurationSection"/> of <paramref name="configuration"/> (the root), e.g.
    /// environment variables Potluck__Gateway__ModelPath and Potluck__Gateway__Port; ModelPath is required.
    /// </summary>
    /// <exception cref="ConfigurationUsageException">A required key is missing or a value does not parse or validate.</exception>
    public static GatewayOptions FromConfiguration(IConfiguration configuration)
    {
        var section = configuration.GetSection(ConfigurationSection);
        if (string.IsNullOrWhiteSpace(section[nameof(ModelPath)]))
            throw new ConfigurationUsageException($"{ClusterSettings.Describe(section, nameof(ModelPath))} is required: the GGUF file the gateway serves");
        return new GatewayOptions { ModelPath = "" }.WithConfiguration(configuration);
    }

    /// <summary>A copy with every key present in the configuration applied over it; absent or empty keys keep this instance's values.</summary>
    public GatewayOptions WithConfiguration(IConfiguration configuration)
    {
        var section = configuration.GetSection(ConfigurationSection);
        var cluster = ClusterSettings.FromConfiguration(configuration,
            new ClusterSettings(ClusterId, RedisConnectionString, PrimarySiloEndpoint, FastFailureDetection));
        var options = this with
        {
            ModelPath = Read(section, nameof(ModelPath)) ?? ModelPath,
            ListenAddress = Read(section, nameof(ListenAddress)) ?? ListenAddress,
            Port = ReadInt(section, nameof(Port), Port, 0, 65535),
            SiloPort = ReadInt(section, nameof(SiloPort), SiloPort, 0, 65535),
            PoolPort = Read(section, nameof(PoolPort)) is null ? PoolPort : ReadInt(section, nameof(PoolPort), 0, 0, 65535),
            GatewayPort = ReadInt(section, nameof(GatewayPort), GatewayPort, 0, 65535),
            AdvertisedHost = Read(section, nameof(AdvertisedHost)) ?? AdvertisedHost,
            ClusterId = Read(section, nameof(ClusterId)) ?? cluster.ClusterId,
            RedisConnectionString = Read(section, nameof(RedisConnectionString)) ?? cluster.RedisConnectionString,
            PrimarySiloEndpoint = Read(section, nameof(PrimarySiloEndpoint)) ?? cluster.PrimarySiloEndpoint,
            FastFailureDetection = ReadBool(section, nameof(FastFailureDetection), cluster.FastFailureDetection),
            WireType = ReadWire(section, WireType),
            MaxBodyBytes = ReadLong(section, nameof(MaxBodyBytes), MaxBodyBytes, 1024),
            Threads = ReadInt(section, nameof(Threads), Threads, 0, 4096),
            MaxPromptCharacters = Read(section, nameof(MaxPromptCharacters)) is null ? MaxPromptCharacters
                : ReadInt(section, nameof(MaxPromptCharacters), 0, 1, int.MaxValue),
            TokenizeTimeout = ReadDuration(section, nameof(TokenizeTimeout), TokenizeTimeout),
            PrefillChunkRows = ReadInt(section, nameof(PrefillChunkRows), PrefillChunkRows, 1, 1 << 20),
            StepTimeout = ReadDuration(section, nameof(StepTimeout), StepTimeout),
            KvWaitTimeout = ReadDuration(section, nameof(KvWaitTimeout), KvWaitTimeout),
            PoolRefreshPeriod = ReadDuration(section, nameof(PoolRefreshPeriod), PoolRefreshPeriod),
            MaxConcurrentSessions = ReadInt(section, nameof(MaxConcurrentSessions), MaxConcurrentSessions, 1, 1 << 20),
            MaxQueuedRequests = ReadInt(section, nameof(MaxQueuedRequests), MaxQueuedRequests, 0, 1 << 20),
            QueueTimeout = ReadDuration(section, nameof(QueueTimeout), QueueTimeout),
            QueueKeepAliveInterval = ReadDuration(section, nameof(QueueKeepAliveInterval), QueueKeepAliveInterval),
            ModelName = Read(section, nameof(ModelName)) ?? ModelName,
            GatewayId = Read(section, nameof(GatewayId)) ?? GatewayId,
            Security = PoolSecuritySettings.FromConfiguration(configuration, Security),
            // Access control: every key source adds up; the other lists are replaced by what configuration gives.
            ApiKeys = [.. ReadList(section, nameof(ApiKeys)) ?? ApiKeys, .. Split(configuration[ApiKeysEnvironmentVariable])],
            ApiKeysFile = Read(section, nameof(ApiKeysFile)) ?? ApiKeysFile,
            AdminKey = Read(section, nameof(AdminKey)) ?? AdminKey,
            AdminKeyFile = Read(section, nameof(AdminKeyFile)) ?? AdminKeyFile,
            CorsOrigins = ReadList(section, nameof(CorsOrigins)) ?? CorsOrigins,
            AllowedHosts = ReadList(section, nameof(AllowedHosts)) ?? AllowedHosts,
            TlsCertificateFile = Read(section, nameof(TlsCertificateFile)) ?? TlsCertificateFile,
            TlsKeyFile = Read(section, nameof(TlsKeyFile)) ?? TlsKeyFile,
            Insecure = ReadBool(section, nameof(Insecure), Insecure),
            RateLimitPerMinute = ReadInt(section, nameof(RateLimitPerMinute), RateLimitPerMinute, 0, 1_000_000),
            ConcurrencyLimit = ReadInt(section, nameof(ConcurrencyLimit), ConcurrencyLimit, 0, 1_000_000),
            SiloListenAddress = Read(section, nameof(SiloListenAddress)) ?? SiloListenAddress,
        };
        var invalid = new GatewayOptionsValidator().Validate(null, options);
        return invalid.Failed ? throw new ConfigurationUsageException(invalid.FailureMessage) : options;
    }

    private static string? Read(IConfigurationSection section, string key) =>
        string.IsNullOrWhiteSpace(section[key]) ? null : section[key]!.Trim();

    /// <summary>A list as one comma-separated value, or as children (Key:0, Key:1, ...); null when neither is there.</summary>
    private static List<string>? ReadList(IConfigurationSection section, string key)
    {
        var values = new List<string>(Split(section[key]));
        foreach (var child in section.GetSection(key).GetChildren()) values.AddRange(Split(child.Value));
        return values.Count == 0 ? null : values;
    }

    private static IEnumerable<string> Split(string? text) =>
        string.IsNullOrWhiteSpace(text) ? [] : text.Split([',', ';'], StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);

    private static int ReadInt(IConfigurationSection section, string key, int fallback, int min, int max)
    {
        if (Read(section, key) is not { } text) return fallback;
        if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value >= min && value <= max) return value;
        throw new ConfigurationUsageException($"{ClusterSettings.Describe(section, key)} is '{text}': expected an integer from {min} to {max}");
    }

    private static long ReadLong(IConfigurationSection section, string key, long fallback, long min)
    {
        if (Read(section, key) is not { } text) return fallback;
        if (long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value >= min) return value;
        throw new ConfigurationUsageException($"{ClusterSettings.Describe(section, key)} is '{text}': expected an integer of at least {min}");
    }

    private static bool ReadBool(IConfigurationSection section, string key, bool fallback)
    {
        if (Read(section, key) is not { } text) return fallback;
        if (bool.TryParse(text, out var value)) return value;
        if (text is "1" or "0") return text == "1";
        throw new ConfigurationUsageException($"{ClusterSettings.Describe(section, key)} is '{text}': expected true or false");
    }

    private static HiddenType ReadWire(IConfigurationSection section, HiddenType fallback)
    {
        if (Read(section, nameof(WireType)) is not { } text) return fallback;
        return Enum.TryParse<HiddenType>(text, ignoreCase: true, out var value) && value is HiddenType.F16 or HiddenType.F32
            ? value
            : throw new ConfigurationUsageException($"{ClusterSettings.Describe(section, nameof(WireType))} is '{text}': expected F16 or F32");
    }

    /// <summary>A duration as "00:00:02" or a number of seconds ("2", "0.5").</summary>
    private static TimeSpan ReadDuration(IConfigurationSection section, string key, TimeSpan fallback)
    {
        if (Read(section, key) is not { } text) return fallback;
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) && seconds > 0 && seconds < TimeSpan.MaxValue.TotalSeconds)
            return TimeSpan.FromSeconds(seconds);
        if (TimeSpan.TryParse(text, CultureInfo.InvariantCulture, out var value) && value > TimeSpan.Zero) return value;
        throw new ConfigurationUsageException($"{ClusterSettings.Describe(section, key)} is '{text}': expected a positive duration (seconds, or hh:mm:ss)");
    }
}

/// <summary>What a gateway's options must satisfy; <see cref="GatewayHost.Build"/> checks it before loading anything.</summary>
public sealed class GatewayOptionsValidator : IValidateOptions<GatewayOptions>
{
    public ValidateOptionsResult Validate(string? name, GatewayOptions options)
    {
        var failures = new List<string>();
        if (string.IsNullOrWhiteSpace(options.ModelPath)) failures.Add("ModelPath is required: the GGUF file the gateway serves");
        if (options.Port is < 0 or > 65535) failures.Add($"port {options.Port} is out of range");
        if (options.SiloPort is < 0 or > 65535) failures.Add($"silo port {options.SiloPort} is out of range");
        if (options.PoolPort is < 0 or > 65535) failures.Add($"pool port {options.PoolPort} is out of range");
        if (options.PoolPort is > 0 && options.PoolPort == options.Port) failures.Add($"the pool port and the API port are both {options.Port}");
        if (options.PrefillChunkRows < 1) failures.Add("PrefillChunkRows must be at least 1");
        if (options.MaxBodyBytes < 1024) failures.Add("MaxBodyBytes must be at least 1024");
        if (options.MaxConcurrentSessions < 1) failures.Add("MaxConcurrentSessions must be at least 1");
        if (options.MaxQueuedRequests < 0) failures.Add("MaxQueuedRequests must be 0 (no queue) or more");
        if (options.QueueTimeout <= TimeSpan.Zero) failures.Add("QueueTimeout must be positive");
        if (options.QueueKeepAliveInterval <= TimeSpan.Zero) failures.Add("QueueKeepAliveInterval must be positive");
        if (options.Threads < 0) failures.Add("Threads must be 0 (all cores) or more");
        if (options.MaxPromptCharacters is < 1) failures.Add("MaxPromptCharacters must be at least 1 (or unset: 16 per context token)");
        if (options.TokenizeTimeout <= TimeSpan.Zero) failures.Add("TokenizeTimeout must be positive");
        if (options.KvWaitTimeout < TimeSpan.Zero) failures.Add("KvWaitTimeout must not be negative");
        if (options.WireType is not (HiddenType.F16 or HiddenType.F32)) failures.Add($"WireType {options.WireType} is not F16 or F32");
        if (string.IsNullOrWhiteSpace(options.GatewayId) || options.GatewayId.Contains('/', StringComparison.Ordinal))
            failures.Add($"GatewayId '{options.GatewayId}' must be non-empty and without '/'");
        if (options.PrimarySiloEndpoint is { } seed && !ClusterSettings.IsHostPort(seed))
            failures.Add($"PrimarySiloEndpoint '{seed}' is not HOST:PORT (the seed silo)");
        // Access control; keys and files are read (and checked) by GatewayAccess.Resolve.
        if (options.RateLimitPerMinute < 0) failures.Add("RateLimitPerMinute must be 0 (no limit) or more");
        if (options.ConcurrencyLimit < 0) failures.Add("ConcurrencyLimit must be 0 (no limit) or more");
        if (string.IsNullOrWhiteSpace(options.TlsCertificateFile) != string.IsNullOrWhiteSpace(options.TlsKeyFile))
            failures.Add("TlsCertificateFile and TlsKeyFile go together (--tls-cert and --tls-key)");
        foreach (var origin in options.CorsOrigins)
        {
            if (origin == "*" || origin.EndsWith('/') || !Uri.TryCreate(origin, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || uri.AbsolutePath != "/")
                failures.Add($"CORS origin '{origin}' must be scheme://host[:port] (http or https, no path, no '*')");
        }
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
