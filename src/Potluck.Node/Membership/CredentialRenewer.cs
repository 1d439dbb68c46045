using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Potluck.Hosting;
using Potluck.Node.Joining;
using Potluck.Security;

namespace Potluck.Node.Membership;

/// <summary>
/// Renews this node's certificate at <see cref="MemberCredential.RenewAt"/> (half-life: 12 h of a 24 h certificate):
/// a token-enrolled node sends a CSR for the same identity to the pool endpoint named in its pool.json, presenting its
/// current certificate; a node that issued its own from this machine's pool directory issues again from there.
/// Failures retry with backoff (30 s doubling to 10 min) until the certificate expires; the new one is saved and
/// swapped in (new connections use it).
/// </summary>
public sealed class CredentialRenewer(MemberSecurity security, PoolSecuritySettings settings, ILogger<CredentialRenewer> log,
    TimeProvider? clock = null) : BackgroundService
{
    private static readonly TimeSpan FirstRetry = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan LastRetry = TimeSpan.FromMinutes(10);
    private readonly TimeProvider _clock = clock ?? TimeProvider.System;

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        var retry = FirstRetry;
        while (!stop.IsCancellationRequested)
        {
            var current = security.Credential.Current;
            var wait = current.RenewAt - _clock.GetUtcNow();
            if (wait > TimeSpan.Zero) await Task.Delay(wait, _clock, stop);
            try
            {
                var next = await RenewAsync(security.Credential.Current, stop);
                security.Credential.Replace(next);
                log.LogInformation("Renewed the member certificate of {Identity} (valid until {NotAfter:u}, next renewal at {RenewAt:u})",
                    next.Identity, next.NotAfter, next.RenewAt);
                retry = FirstRetry;
            }
            catch (Exception e) when (e is PoolJoinException or PoolRefusedException or PoolSecurityException or IOException or UnauthorizedAccessException)
            {
                var left = security.Credential.Current.NotAfter - _clock.GetUtcNow();
                log.LogWarning("Could not renew the member certificate of {Identity}: {Reason}; retrying in {Retry:F0} s ({Left:F1} h of validity left)",
                    security.Identity, e.Message, retry.TotalSeconds, left.TotalHours);
                await Task.Delay(retry, _clock, stop);
                retry = TimeSpan.FromTicks(Math.Min(retry.Ticks * 2, LastRetry.Ticks));
            }
        }
    }

    /// <summary>One renewal, from the pool endpoint (token-enrolled) or this machine's pool directory.</summary>
    public async Task<MemberCredential> RenewAsync(MemberCredential current, CancellationToken ct)
    {
        var identity = current.Identity;
        var identityDirectory = settings.IdentityDirectoryFor(identity.PoolId, identity.NodeId);
        if (PoolAdmission.ReadPoolUrl(identityDirectory) is { } poolUrl)
        {
            var renewed = await PoolJoinClient.RenewAsync(poolUrl, current, PoolJoinClient.DefaultTimeout, ct);
            // Saved before it is used: a restart after this point starts with the new certificate.
            renewed.Save(identityDirectory);
            return renewed;
        }
        var poolDirectory = settings.PoolDirectoryFor(identity.PoolId);
        if (!PoolAuthority.Exists(poolDirectory))
            throw new PoolSecurityException($"no pool endpoint to renew at ({identityDirectory} has no {PoolAdmission.PointerFile}) and no pool CA at {poolDirectory}");
        using var authority = PoolAuthority.Load(poolDirectory, identity.PoolId);
        var issued = authority.IssueCredential(identity);
        if (MemberCredential.Exists(identityDirectory)) issued.Save(identityDirectory);
        return issued;
    }
}
