using System.Collections.Concurrent;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Connections.Features;
using Potluck.Hosting;
using Potluck.Security;

namespace Potluck.Node.Membership;

/// <summary>
/// Closes a revoked member's open requests on this node: every request whose client certificate names a node is
/// tracked while it runs; when the revocation list changes, those of revoked nodes are aborted and their connections
/// asked to close, and a request arriving on a connection opened before the revocation is refused. (New
/// connections of a revoked node already fail the TLS check.)
/// </summary>
public sealed class RevokedRequestGuard
{
    private readonly RevocationList _revocations;
    private readonly ConcurrentDictionary<HttpContext, string> _open = new();

    public RevokedRequestGuard(MemberSecurity security)
    {
        _revocations = security.Trust.Revocations;
        _revocations.Changed += Abort;
    }

    public async Task InvokeAsync(HttpContext context, RequestDelegate next)
    {
        var certificate = context.Connection.ClientCertificate;
        var nodeId = certificate is null ? null : PoolIdentity.FromCertificate(certificate)?.NodeId;
        if (nodeId is null)
        {
            await next(context);
            return;
        }
        if (_revocations.IsRevoked(nodeId))
        {
            Close(context);
            return;
        }
        _open[context] = nodeId;
        try
        {
            await next(context);
        }
        finally
        {
            _open.TryRemove(context, out _);
        }
    }

    private void Abort(IReadOnlySet<string> revoked)
    {
        foreach (var (context, nodeId) in _open)
            if (revoked.Contains(nodeId)) Close(context);
    }

    private static void Close(HttpContext context)
    {
        context.Features.Get<IConnectionLifetimeNotificationFeature>()?.RequestClose();
        context.Abort();
    }
}
