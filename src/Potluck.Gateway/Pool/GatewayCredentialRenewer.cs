using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Potluck.Hosting;
using Potluck.Security;

namespace Potluck.Gateway.Pool;

/// <summary>The gateway's own member certificate, renewed in process from its authority at half-life.</summary>
public sealed class GatewayCredentialRenewer(MemberSecurity security, ILogger<GatewayCredentialRenewer> log) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        if (security.Authority is not { } authority) return;
        while (!stop.IsCancellationRequested)
        {
            var wait = security.Credential.Current.RenewAt - DateTimeOffset.UtcNow;
            if (wait > TimeSpan.Zero) await Task.Delay(wait, stop);
            try
            {
                var next = authority.IssueCredential(security.Identity);
                security.Credential.Replace(next);
                log.LogInformation("Renewed the gateway's member certificate (valid until {NotAfter:u})", next.NotAfter);
            }
            catch (Exception e) when (e is PoolSecurityException or System.Security.Cryptography.CryptographicException)
            {
                log.LogError("Could not renew the gateway's member certificate: {Reason}; retrying in a minute", e.Message);
                await Task.Delay(TimeSpan.FromMinutes(1), stop);
            }
        }
    }
}
