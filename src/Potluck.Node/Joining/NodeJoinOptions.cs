using System.Globalization;
using Microsoft.Extensions.Configuration;

namespace Potluck.Node.Joining;

/// <summary>
/// How a node finds its pool and (without a span) chooses one, from the node's section (Potluck:Node): Join (the
/// gateway's URL; a seed HOST:PORT there is <see cref="NodeOptions.PrimarySiloEndpoint"/>), Memory, MaxLayers,
/// Rebalance and RebalanceEvery. `potluck node` maps --join, --memory, --max-layers, --rebalance and --rebalance-every here.
/// </summary>
public sealed record NodeJoinOptions
{
    public const int DefaultRebalanceSeconds = 30;
    public const int MinRebalanceSeconds = 1;
    public const int MaxRebalanceSeconds = 3600;

    /// <summary>The pool's gateway (Join=http://HOST:PORT); null when the node joins by seed or Redis.</summary>
    public Uri? GatewayUrl { get; init; }

    /// <summary>Memory for weights and KV when choosing a span; null: what the machine has free.</summary>
    public long? MemoryBudgetBytes { get; init; }

    /// <summary>Most layers to hold when choosing a span.</summary>
    public int? MaxLayers { get; init; }

    /// <summary>Keep choosing: move to a span the pool needs more (with a gateway URL and no fixed span).</summary>
    public bool Rebalance { get; init; }

    public TimeSpan RebalancePeriod { get; init; } = TimeSpan.FromSeconds(DefaultRebalanceSeconds);

    /// <summary>Whether the cluster id was given (flag or configuration); joining by URL otherwise takes the pool's.</summary>
    public bool ClusterIdGiven { get; init; }

    /// <summary>Whether the advertised address was given; joining a remote gateway otherwise advertises the route's local address.</summary>
    public bool AdvertisedHostGiven { get; init; }

    /// <exception cref="NodeConfigurationException">A value does not parse (a usage error, exit 2).</exception>
    public static NodeJoinOptions FromConfiguration(IConfiguration configuration)
    {
        var section = configuration.GetSection(NodeOptions.ConfigurationSection);
        var options = new NodeJoinOptions
        {
            ClusterIdGiven = NodeOptions.IsSet(configuration, nameof(NodeOptions.ClusterId)),
            AdvertisedHostGiven = NodeOptions.IsSet(configuration, nameof(NodeOptions.AdvertisedHost)),
            Rebalance = NodeOptions.ReadBool(section, nameof(Rebalance), false),
        };
        if (NodeOptions.ReadString(section, "Join") is { } join && PoolJoinClient.IsGatewayUrl(join))
        {
            if (!Uri.TryCreate(join, UriKind.Absolute, out var uri) || string.IsNullOrEmpty(uri.Host))
                throw new NodeConfigurationException($"{NodeOptions.Describe(section, "Join")} is '{join}': not a gateway URL such as http://192.168.1.10:8080");
            options = options with { GatewayUrl = uri };
        }
        if (NodeOptions.ReadString(section, "Memory") is { } memory)
        {
            options = options with
            {
                MemoryBudgetBytes = NodeCapacity.TryParseSize(memory, out var bytes) ? bytes
                    : throw new NodeConfigurationException($"{NodeOptions.Describe(section, "Memory")} is '{memory}': expected a size such as 8G, 512M or 1.5GiB"),
            };
        }
        if (NodeOptions.ReadString(section, nameof(MaxLayers)) is { } maxLayers)
        {
            options = options with
            {
                MaxLayers = int.TryParse(maxLayers, NumberStyles.None, CultureInfo.InvariantCulture, out var count) && count >= 1 ? count
                    : throw new NodeConfigurationException($"{NodeOptions.Describe(section, nameof(MaxLayers))} is '{maxLayers}': expected an integer of at least 1"),
            };
        }
        if (NodeOptions.ReadString(section, "RebalanceEvery") is { } every)
        {
            options = options with
            {
                RebalancePeriod = double.TryParse(every, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds)
                    && seconds is >= MinRebalanceSeconds and <= MaxRebalanceSeconds
                    ? TimeSpan.FromSeconds(seconds)
                    : throw new NodeConfigurationException(
                        $"{NodeOptions.Describe(section, "RebalanceEvery")} is '{every}': expected {MinRebalanceSeconds} to {MaxRebalanceSeconds} seconds"),
            };
        }
        return options;
    }
}
