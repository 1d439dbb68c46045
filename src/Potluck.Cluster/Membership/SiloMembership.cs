using System.Globalization;
using System.Net;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;
using Orleans.Hosting;

namespace Potluck.Cluster.Membership;

/// <summary>Where a silo listens and how it finds the others; the same for nodes and gateways.</summary>
public sealed record SiloMembershipSettings(
    string ClusterId,
    IPAddress Advertised,
    IPAddress Listen,
    int SiloPort,
    int GatewayPort,
    string? RedisConnectionString,
    string? PrimarySiloEndpoint,
    bool FastFailureDetection)
{
    /// <summary>
    /// A file holding the Redis password (a mounted secret). Unset: the configuration's
    /// <see cref="RedisConnection.PasswordFileKey"/> (Potluck__Cluster__RedisPasswordFile), if any.
    /// </summary>
    public string? RedisPasswordFile { get; init; }
}

/// <summary>Membership configuration every Potluck silo shares: Redis clustering when configured, else development clustering.</summary>
public static class SiloMembership
{
    public static ISiloBuilder UsePotluckMembership(this ISiloBuilder silo, SiloMembershipSettings settings)
    {
        silo.Configure<ClusterOptions>(o =>
        {
            o.ClusterId = settings.ClusterId;
            o.ServiceId = "potluck";
        });
        silo.Configure<EndpointOptions>(o =>
        {
            o.AdvertisedIPAddress = settings.Advertised;
            o.SiloPort = settings.SiloPort;
            o.GatewayPort = settings.GatewayPort;
            o.SiloListeningEndpoint = new IPEndPoint(settings.Listen, settings.SiloPort);
            if (settings.GatewayPort > 0) o.GatewayListeningEndpoint = new IPEndPoint(settings.Listen, settings.GatewayPort);
        });
        if (!string.IsNullOrWhiteSpace(settings.RedisConnectionString))
        {
            // Read now, not when Orleans first connects: a missing or empty secret is a configuration error at start-up.
            var redis = RedisConnection.Options(settings.RedisConnectionString,
                settings.RedisPasswordFile ?? silo.Configuration[RedisConnection.PasswordFileKey]);
            silo.UseRedisClustering(o => o.ConfigurationOptions = redis);
        }
        else
        {
            var primary = string.IsNullOrWhiteSpace(settings.PrimarySiloEndpoint)
                ? new IPEndPoint(settings.Advertised, settings.SiloPort)
                : ParseEndpoint(settings.PrimarySiloEndpoint);
            silo.UseDevelopmentClustering(primary);
        }
        silo.Configure<ClusterMembershipOptions>(settings.FastFailureDetection ? UseFastFailureDetection : UseProductionFailureDetection);
        return silo;
    }

    /// <summary>
    /// Production failure detection. Orleans adapts each probe's timeout between half and four times
    /// <see cref="ClusterMembershipOptions.ProbeTimeout"/> from observed response times; on a LAN it settles at the
    /// minimum. A silo is suspected after <see cref="ClusterMembershipOptions.NumMissedProbesLimit"/> missed probes in
    /// a row and declared dead on <see cref="ClusterMembershipOptions.NumVotesForDeathDeclaration"/> votes (fewer when
    /// fewer silos are left to vote). Measured figures and the reasoning: docs/architecture.md, "Failure detection".
    /// </summary>
    public static void UseProductionFailureDetection(ClusterMembershipOptions o)
    {
        o.ProbeTimeout = TimeSpan.FromSeconds(3);
        o.NumMissedProbesLimit = 3;
        o.NumVotesForDeathDeclaration = 2;
    }

    /// <summary>Tests only: a dead silo is noticed in about a second, but a slow, healthy one can be evicted.</summary>
    public static void UseFastFailureDetection(ClusterMembershipOptions o)
    {
        o.ProbeTimeout = TimeSpan.FromSeconds(1);
        o.NumMissedProbesLimit = 2;
        o.NumVotesForDeathDeclaration = 1;
        o.TableRefreshTimeout = TimeSpan.FromSeconds(1);
        o.IAmAliveTablePublishTimeout = TimeSpan.FromSeconds(2);
    }

    /// <summary>An IPv4 address for a literal address or host name ("localhost" is loopback).</summary>
    public static IPAddress ResolveIPv4(string host)
    {
        if (IPAddress.TryParse(host, out var ip)) return ip;
        if (host is "localhost") return IPAddress.Loopback;
        foreach (var address in Dns.GetHostAddresses(host))
            if (address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork) return address;
        throw new ArgumentException($"host '{host}' does not resolve to an IPv4 address");
    }

    /// <summary>Parses host:port, resolving a host name to IPv4.</summary>
    public static IPEndPoint ParseEndpoint(string endpoint)
    {
        if (IPEndPoint.TryParse(endpoint, out var parsed) && parsed.Port != 0) return parsed;
        var colon = endpoint.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(endpoint[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var port))
            throw new FormatException($"'{endpoint}' is not host:port");
        return new IPEndPoint(ResolveIPv4(endpoint[..colon]), port);
    }
}
