using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Potluck.Hosting;
using Potluck.Security;

namespace Potluck.Gateway.Pool;

/// <summary>
/// The gateway's pool endpoint listener (<see cref="GatewayOptions.PoolPort"/>, default 7443): HTTPS with the gateway's
/// member certificate and the pool CA as the chain's extra certificate, client certificates asked for but optional (each
/// endpoint checks them with <see cref="PoolTrust"/>), and every connection tracked by the node id its client
/// certificate names, so a revocation closes the revoked member's open connections at once.
/// </summary>
public sealed class PoolListener
{
    private readonly MemberSecurity _security;
    private readonly ConcurrentDictionary<string, (string NodeId, ConnectionContext Connection)> _open = new(StringComparer.Ordinal);
    private SslStreamCertificateContext _context;
    private ListenOptions? _listen;

    public PoolListener(MemberSecurity security)
    {
        _security = security;
        _context = ContextFor(security.Credential.Current);
        // Renewal swaps the certificate: new handshakes use the new one.
        security.Credential.Changed += credential => Volatile.Write(ref _context, ContextFor(credential));
        security.Trust.Revocations.Changed += AbortRevoked;
    }

    /// <summary>The port the listener is bound to (after start; the configured one, or what 0 picked).</summary>
    public int Port => (_listen?.EndPoint as IPEndPoint)?.Port ?? 0;

    /// <summary>How many tracked connections present a client certificate of <paramref name="nodeId"/> (tests, logs).</summary>
    public int OpenConnectionsOf(string nodeId) => _open.Values.Count(v => v.NodeId == nodeId);

    public void Listen(KestrelServerOptions kestrel, IPAddress address, int port)
    {
        kestrel.Listen(address, port, listen =>
        {
            _listen = listen;
            // Joiners and members speak HTTP/1.1 here; no ALPN negotiation to get wrong.
            listen.Protocols = HttpProtocols.Http1;
            listen.UseHttps(new TlsHandshakeCallbackOptions
            {
                HandshakeTimeout = TimeSpan.FromSeconds(10),
                OnConnection = _ => ValueTask.FromResult(new SslServerAuthenticationOptions
                {
                    ServerCertificateContext = Volatile.Read(ref _context),
                    // Asked for, not required: a joiner has no certificate yet. Endpoints that need one check it themselves.
                    ClientCertificateRequired = true,
                    RemoteCertificateValidationCallback = (_, _, _, _) => true,
                    ApplicationProtocols = [SslApplicationProtocol.Http11],
                    CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                }),
            });
            listen.Use(next => connection => TrackAsync(connection, next));
        });
    }

    private async Task TrackAsync(ConnectionContext connection, ConnectionDelegate next)
    {
        var certificate = connection.Features.Get<ITlsConnectionFeature>()?.ClientCertificate;
        var nodeId = certificate is null ? null : PoolIdentity.FromCertificate(certificate)?.NodeId;
        if (nodeId is null)
        {
            await next(connection);
            return;
        }
        // A revoked node connecting anew gets the endpoints' 403 naming the revocation; open ones are aborted on the change.
        _open[connection.ConnectionId] = (nodeId, connection);
        try
        {
            await next(connection);
        }
        finally
        {
            _open.TryRemove(connection.ConnectionId, out _);
        }
    }

    private void AbortRevoked(IReadOnlySet<string> revoked)
    {
        foreach (var (_, (nodeId, connection)) in _open)
            if (revoked.Contains(nodeId)) connection.Abort(new ConnectionAbortedException($"node {nodeId} was revoked"));
    }

    private SslStreamCertificateContext ContextFor(MemberCredential credential) =>
        // The CA rides along as an extra certificate: platforms that send it let a joiner pin it from the handshake
        // (Linux trims a self-signed root; the public join document carries it too).
        SslStreamCertificateContext.Create(credential.Certificate, [credential.Authority], offline: true);
}
