using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Potluck.Cluster.Membership;
using Potluck.Hosting;

namespace Potluck.Gateway.Access;

/// <summary>Who may call the operator endpoints (announce, sessions, cancel, pool details).</summary>
public enum OperatorAccess
{
    /// <summary>An admin key is configured: only it (or the dashboard's cookie, for reads) is let in.</summary>
    AdminKey,

    /// <summary>No admin key, on a loopback listen address (desktop `serve`) or with --insecure: open.</summary>
    Open,

    /// <summary>No admin key on a non-loopback address: refused with a 403 that says to set --admin-key.</summary>
    Closed,
}

/// <summary>
/// The gateway's access setup, resolved once at start from <see cref="GatewayOptions"/>: the keys, whether the OpenAI
/// API and the operator endpoints are open, the allowed Host names and the API's certificate. Building it is where the
/// safe defaults are enforced: a non-loopback API without keys refuses to start unless --insecure.
/// </summary>
public sealed class GatewayAccess
{
    private GatewayAccess(GatewayOptions options, AccessKeys keys, IPAddress listen, IApiCertificateSource? certificate)
    {
        Options = options;
        Keys = keys;
        ListenAddress = listen;
        IsLoopback = IPAddress.IsLoopback(listen);
        Certificate = certificate;
        Operator = keys.HasAdminKey ? OperatorAccess.AdminKey : IsLoopback || options.Insecure ? OperatorAccess.Open : OperatorAccess.Closed;
        AllowedHosts = ChooseAllowedHosts(options, keys, listen);
        Warnings = Warn(options, keys, IsLoopback, certificate);
    }

    public GatewayOptions Options { get; }
    public AccessKeys Keys { get; }
    public IPAddress ListenAddress { get; }
    public bool IsLoopback { get; }
    public OperatorAccess Operator { get; }

    /// <summary>True when the OpenAI API takes requests without a key (no API keys configured).</summary>
    public bool ApiIsOpen => !Keys.HasApiKeys;

    /// <summary>Pool details (/api/pool, routes on /readyz, health entry texts) are shown only to the admin.</summary>
    public bool PoolDetailsGuarded => Operator != OperatorAccess.Open;

    /// <summary>What Host headers are served (HostFiltering); "*" is any.</summary>
    public IReadOnlyList<string> AllowedHosts { get; }

    /// <summary>The API's HTTPS certificate; null serves plain HTTP.</summary>
    public IApiCertificateSource? Certificate { get; }

    /// <summary>Logged as warnings on every start (what --insecure relaxes, keys over plaintext).</summary>
    public IReadOnlyList<string> Warnings { get; }

    /// <summary>Host names that are never a DNS-rebinding vector: the loopback names themselves.</summary>
    public static readonly IReadOnlyList<string> LoopbackHosts = ["localhost", "127.0.0.1", "[::1]"];

    /// <summary>Reads the keys and the certificate and applies the start rules.</summary>
    /// <exception cref="ConfigurationUsageException">Unreadable keys or certificate, or a non-loopback API without keys and without --insecure.</exception>
    public static GatewayAccess Resolve(GatewayOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        IPAddress listen;
        try
        {
            listen = SiloMembership.ResolveIPv4(options.ListenAddress);
        }
        catch (Exception e) when (e is ArgumentException or SocketException)
        {
            throw new ConfigurationUsageException($"the listen address '{options.ListenAddress}' does not resolve: {e.Message}");
        }
        var keys = AccessKeys.Load(options);
        if (!IPAddress.IsLoopback(listen) && !keys.HasApiKeys && !options.Insecure)
            throw new ConfigurationUsageException(
                $"refusing to serve the API on {options.ListenAddress}, a non-loopback address, without API keys: anyone who reaches it could use the pool. " +
                "Set --api-key, --api-keys-file or POTLUCK_API_KEYS, or pass --insecure to serve it openly");
        if (string.IsNullOrWhiteSpace(options.TlsCertificateFile) != string.IsNullOrWhiteSpace(options.TlsKeyFile))
            throw new ConfigurationUsageException("--tls-cert and --tls-key go together: the certificate and its private key (PEM)");
        var certificate = string.IsNullOrWhiteSpace(options.TlsCertificateFile)
            ? options.ApiCertificate
            : new PemFileCertificateSource(options.TlsCertificateFile, options.TlsKeyFile!);
        return new GatewayAccess(options, keys, listen, certificate);
    }

    /// <summary>
    /// Given hosts (plus the loopback names); else on a loopback listen the loopback names; else, with API keys, any
    /// host (a rebound name still needs a key); else (open with --insecure) this machine's own names and addresses, so a
    /// web page cannot reach the open API through a name of its own (DNS rebinding).
    /// </summary>
    private static List<string> ChooseAllowedHosts(GatewayOptions options, AccessKeys keys, IPAddress listen)
    {
        if (options.AllowedHosts.Count > 0)
            return options.AllowedHosts.Contains("*") ? ["*"] : [.. options.AllowedHosts.Concat(LoopbackHosts).Distinct(StringComparer.OrdinalIgnoreCase)];
        if (IPAddress.IsLoopback(listen)) return [.. LoopbackHosts];
        if (keys.HasApiKeys) return ["*"];
        var hosts = new List<string>(LoopbackHosts) { Dns.GetHostName(), options.AdvertisedHost };
        if (listen.Equals(IPAddress.Any)) hosts.AddRange(LocalAddresses());
        else hosts.Add(listen.ToString());
        return [.. hosts.Where(h => !string.IsNullOrWhiteSpace(h)).Distinct(StringComparer.OrdinalIgnoreCase)];
    }

    private static IEnumerable<string> LocalAddresses()
    {
        NetworkInterface[] interfaces;
        try
        {
            interfaces = NetworkInterface.GetAllNetworkInterfaces();
        }
        catch (NetworkInformationException)
        {
            yield break;
        }
        foreach (var nic in interfaces)
        foreach (var address in nic.GetIPProperties().UnicastAddresses)
        {
            var ip = address.Address;
            if (ip.AddressFamily == AddressFamily.InterNetworkV6)
            {
                ip.ScopeId = 0;
                yield return $"[{ip}]";
            }
            else
            {
                yield return ip.ToString();
            }
        }
    }

    private static List<string> Warn(GatewayOptions options, AccessKeys keys, bool loopback, IApiCertificateSource? certificate)
    {
        var warnings = new List<string>();
        if (options.Insecure)
        {
            var relaxed = new List<string>();
            if (!loopback && !keys.HasApiKeys) relaxed.Add($"the OpenAI API on {options.ListenAddress} takes requests without a key");
            if (!loopback && !keys.HasAdminKey) relaxed.Add("the operator endpoints (announce, sessions, cancel, pool details) are open without an admin key");
            warnings.Add(relaxed.Count == 0
                ? "--insecure is set (it relaxes nothing here: the API is on loopback or keys are configured)"
                : $"--insecure: {string.Join("; ", relaxed)}. Anyone who reaches this address can use and steer the pool");
        }
        if (!loopback && certificate is null && (keys.HasApiKeys || keys.HasAdminKey))
            warnings.Add($"keys cross the network in plaintext: the API on {options.ListenAddress} serves HTTP; pass --tls-cert and --tls-key to serve HTTPS");
        return warnings;
    }
}
