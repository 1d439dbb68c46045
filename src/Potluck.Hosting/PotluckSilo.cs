using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;
using Orleans.Hosting;
using Potluck.Cluster.Membership;
using Potluck.Cluster.Placement;

namespace Potluck.Hosting;

/// <summary>The one Orleans silo setup of every Potluck host (node or gateway): membership, control plane, trace propagation.</summary>
public static class PotluckSilo
{
    /// <summary>
    /// Runs an Orleans silo in this host: Redis or development membership (<see cref="SiloMembership"/>), the Potluck
    /// control plane (silo metadata, placement directors, the pool directory's options) and activity propagation, so
    /// grain calls join the caller's trace.
    /// </summary>
    public static WebApplicationBuilder UsePotluckSilo(this WebApplicationBuilder builder, SiloMembershipSettings membership,
        Dictionary<string, string> metadata)
    {
        builder.UseOrleans(silo =>
        {
            silo.UsePotluckMembership(membership);
            silo.AddPotluckControlPlane(metadata);
            silo.AddActivityPropagation();
        });
        return builder;
    }

    /// <summary>
    /// The address a host binds when told to listen on <paramref name="listen"/> while others dial it at
    /// <paramref name="advertised"/>: the given address; without one, loopback when advertising loopback (nothing
    /// else could reach it anyway), else all interfaces.
    /// </summary>
    public static IPAddress ListenAddressFor(string advertised, string? listen)
    {
        if (!string.IsNullOrWhiteSpace(listen))
        {
            var text = listen.Trim();
            if (text is "*" or "+") return IPAddress.Any;
            if (text == "localhost") return IPAddress.Loopback;
            return IPAddress.TryParse(text.Trim('[', ']'), out var address)
                ? address
                : throw new FormatException($"listen address '{listen}' is not an IP address (use 0.0.0.0 for all interfaces)");
        }
        if (advertised == "localhost") return IPAddress.Loopback;
        return IPAddress.TryParse(advertised, out var ip) && IPAddress.IsLoopback(ip) ? ip : IPAddress.Any;
    }
}
