using System.Net;
using System.Security.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Connections.Security;
using Orleans.Hosting;
using Potluck.Security;
using Potluck.Cluster.Membership;
using Potluck.Cluster.Placement;

namespace Potluck.Hosting;

/// <summary>The one Orleans silo setup of every Potluck host (node or gateway): membership, control plane, trace propagation.</summary>
public static class PotluckSilo
{
    /// <summary>
    /// Runs an Orleans silo in this host: Redis or development membership (<see cref="SiloMembership"/>), the Potluck
    /// control plane (silo metadata, placement directors, the pool directory's options), activity propagation, so
    /// grain calls join the caller's trace, and mutual TLS on every silo and gateway connection (<see cref="UsePoolTls(ISiloBuilder, MemberSecurity)"/>).
    /// </summary>
    public static WebApplicationBuilder UsePotluckSilo(this WebApplicationBuilder builder, SiloMembershipSettings membership,
        Dictionary<string, string> metadata, MemberSecurity security)
    {
        builder.UseOrleans(silo =>
        {
            silo.UsePotluckMembership(membership);
            silo.UsePoolTls(security);
            silo.AddPotluckControlPlane(metadata);
            silo.AddActivityPropagation();
        });
        // One line per dead peer, in place of Orleans' probe and connection warnings (quieted in PotluckLogging).
        builder.Services.AddHostedService<PoolMemberWatch>();
        return builder;
    }

    /// <summary>
    /// Mutual TLS on the silo's inbound silo and gateway connections and its outbound silo connections: it presents its
    /// current member certificate (read per handshake, so a renewal takes effect for new connections) and accepts only
    /// peers that <see cref="PoolTrust.ValidateMember"/> trusts: members of this pool, never volunteers, nothing revoked.
    /// </summary>
    public static ISiloBuilder UsePoolTls(this ISiloBuilder silo, MemberSecurity security) =>
        silo.UseTls(options => ConfigureMutualTls(options, security.Credential, security.Trust));

    /// <summary>The same for an Orleans client (tests, tools): it presents <paramref name="credential"/> and trusts members only.</summary>
    public static IClientBuilder UsePoolTls(this IClientBuilder client, RotatingCredential credential, PoolTrust trust) =>
        client.UseTls(options => ConfigureMutualTls(options, credential, trust));

    private static void ConfigureMutualTls(TlsOptions options, RotatingCredential credential, PoolTrust trust)
    {
        // The client side insists on a LocalCertificate even when a selector is set; the selectors win per handshake.
        options.LocalCertificate = credential.Current.Certificate;
        options.LocalServerCertificateSelector = (_, _) => credential.Current.Certificate;
        options.LocalClientCertificateSelector = (_, _, _, _, _) => credential.Current.Certificate;
        options.RemoteCertificateMode = RemoteCertificateMode.RequireCertificate;
        options.ClientCertificateMode = RemoteCertificateMode.RequireCertificate;
        options.SslProtocols = SslProtocols.Tls13 | SslProtocols.Tls12;
        options.CheckCertificateRevocation = false;
        // Platform policy errors (untrusted root, host name) do not matter: the pool CA is the only root and the
        // identity is the certificate's SAN URI, not a host name.
        options.RemoteCertificateValidation = (certificate, _, _) => trust.ValidateMember(certificate).Trusted;
    }

    /// <summary>
    /// The address a host binds when told to listen on <paramref name="listen"/> while others dial it at
    /// <paramref name="advertised"/>: the given address; without one, the advertised address itself when it is an IP
    /// (loopback stays loopback; a LAN address binds only the interface the pool dials, never every interface), and all
    /// interfaces only for a host name (a container's service name, whose own address the container does not know).
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
        return IPAddress.TryParse(advertised.Trim('[', ']'), out var ip) ? ip : IPAddress.Any;
    }
}
