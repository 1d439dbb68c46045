using System.Globalization;
using Microsoft.Extensions.Configuration;
using Potluck.Cluster.Membership;

namespace Potluck.Hosting;

/// <summary>
/// The pool-wide settings a gateway and its nodes share, from section <see cref="ConfigurationSection"/>
/// (environment variables Potluck__Cluster__ClusterId, ...). A host's own section (Potluck:Node, Potluck:Gateway)
/// may override each key, so one compose file or Helm value sets them once for every member.
/// </summary>
/// <param name="ClusterId">Orleans cluster id; the gateway and its nodes share it.</param>
/// <param name="RedisConnectionString">Redis membership, e.g. "redis:6379" (options after commas: "password=...",
/// "ssl=true"); takes precedence over the seed.</param>
/// <param name="PrimarySiloEndpoint">Development membership seed HOST:PORT; null with no Redis makes this silo the primary.</param>
/// <param name="FastFailureDetection">Tight membership probing (tests only).</param>
public sealed record ClusterSettings(string ClusterId, string? RedisConnectionString, string? PrimarySiloEndpoint, bool FastFailureDetection)
{
    public const string ConfigurationSection = "Potluck:Cluster";

    /// <summary>
    /// A file holding the Redis password (a mounted secret: compose's pool volume, a Kubernetes Secret), so it is in no
    /// environment variable, command line or log line. The silo reads it when it builds the Redis connection
    /// (<see cref="RedisConnection"/>); it may not be combined with a password in <see cref="RedisConnectionString"/>.
    /// </summary>
    public string? RedisPasswordFile { get; init; }

    /// <summary>The keys this section holds (property names).</summary>
    public static readonly IReadOnlySet<string> Keys = new HashSet<string>(StringComparer.OrdinalIgnoreCase)
    {
        nameof(ClusterId), nameof(RedisConnectionString), nameof(PrimarySiloEndpoint), nameof(FastFailureDetection), nameof(RedisPasswordFile),
    };

    /// <summary>These settings with every key present under <see cref="ConfigurationSection"/> applied; empty values mean "not set".</summary>
    /// <exception cref="ConfigurationUsageException">A value does not parse.</exception>
    public static ClusterSettings FromConfiguration(IConfiguration configuration, ClusterSettings defaults)
    {
        var section = configuration.GetSection(ConfigurationSection);
        var settings = defaults with
        {
            ClusterId = Read(section, nameof(ClusterId)) ?? defaults.ClusterId,
            RedisConnectionString = Read(section, nameof(RedisConnectionString)) ?? defaults.RedisConnectionString,
            PrimarySiloEndpoint = Read(section, nameof(PrimarySiloEndpoint)) ?? defaults.PrimarySiloEndpoint,
            RedisPasswordFile = Read(section, nameof(RedisPasswordFile)) ?? defaults.RedisPasswordFile,
        };
        if (settings.RedisPasswordFile is { } passwordFile)
        {
            // Checked here too, so a missing or empty secret stops start-up with the key's name (exit 2), before any model loads.
            try
            {
                RedisConnection.ReadPasswordFile(passwordFile);
            }
            catch (ArgumentException e)
            {
                throw new ConfigurationUsageException($"{Describe(section, nameof(RedisPasswordFile))}: {e.Message}");
            }
        }
        if (Read(section, nameof(FastFailureDetection)) is { } fast)
        {
            settings = settings with
            {
                FastFailureDetection = bool.TryParse(fast, out var value) ? value
                    : fast is "1" or "0" ? fast == "1"
                    : throw new ConfigurationUsageException($"{Describe(section, nameof(FastFailureDetection))} is '{fast}': expected true or false"),
            };
        }
        return settings;
    }

    /// <summary>HOST:PORT with a port from 1 to 65535.</summary>
    public static bool IsHostPort(string endpoint)
    {
        var colon = endpoint.LastIndexOf(':');
        return colon > 0
            && int.TryParse(endpoint.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port)
            && port is > 0 and <= 65535;
    }

    /// <summary>Names a key both ways (configuration path and environment variable), so a message points at what the operator set.</summary>
    public static string Describe(IConfigurationSection section, string key) =>
        $"{section.Path}:{key} (environment variable {section.Path.Replace(":", "__", StringComparison.Ordinal)}__{key})";

    private static string? Read(IConfigurationSection section, string key) =>
        string.IsNullOrWhiteSpace(section[key]) ? null : section[key]!.Trim();
}
