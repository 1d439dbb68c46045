using Potluck.Security;

namespace Potluck.Hosting;

/// <summary>
/// This host's standing in its pool: its rotating member credential, the trust it checks peers with and, on the CA
/// holder (the gateway), the authority itself. One instance per host, registered as a singleton; every TLS
/// callback and the ticket checks read it.
/// </summary>
public sealed class MemberSecurity : IDisposable
{
    private MemberSecurity(RotatingCredential credential, PoolTrust trust, PoolAuthority? authority)
    {
        Credential = credential;
        Trust = trust;
        Authority = authority;
    }

    public RotatingCredential Credential { get; }
    public PoolTrust Trust { get; }

    /// <summary>The pool CA; only on its holder (the gateway).</summary>
    public PoolAuthority? Authority { get; }

    public PoolIdentity Identity => Credential.Identity;
    public string PoolId => Trust.PoolId;

    /// <summary>
    /// The CA holder: loads the pool authority from <see cref="PoolSecuritySettings.PoolDirectoryFor"/>, creating it on
    /// first start, and issues this gateway its own member certificate (kept in memory, renewed in process).
    /// </summary>
    /// <exception cref="ConfigurationUsageException">The pool id is invalid or the authority unreadable.</exception>
    public static MemberSecurity ForAuthority(PoolSecuritySettings settings, string poolId, string memberId)
    {
        CheckIds(poolId, memberId);
        PoolAuthority authority;
        try
        {
            authority = PoolAuthority.LoadOrCreate(settings.PoolDirectoryFor(poolId), poolId);
        }
        catch (Exception e) when (e is PoolSecurityException or IOException or UnauthorizedAccessException)
        {
            throw new ConfigurationUsageException($"cannot open the pool authority: {e.Message}");
        }
        var credential = authority.IssueCredential(PoolIdentity.Create(authority.PoolId, PoolRole.Member, memberId));
        return new MemberSecurity(new RotatingCredential(credential), authority.Trust, authority);
    }

    /// <summary>
    /// A member that is not the CA holder: its credential from its identity directory (written when it joined with a
    /// token); else, when this machine holds the pool's CA directory (`serve`'s children, a lab machine running
    /// `potluck pool`), a certificate issued from it directly.
    /// </summary>
    /// <exception cref="HostExitException">No credential (exit 4, with what to do), or one for another node or pool (exit 2).</exception>
    public static MemberSecurity ForMember(PoolSecuritySettings settings, string poolId, string nodeId)
    {
        CheckIds(poolId, nodeId);
        var identityDirectory = settings.IdentityDirectoryFor(poolId, nodeId);
        MemberCredential credential;
        try
        {
            if (MemberCredential.Exists(identityDirectory))
            {
                credential = MemberCredential.Load(identityDirectory);
            }
            else if (PoolAuthority.Exists(settings.PoolDirectoryFor(poolId)))
            {
                using var authority = PoolAuthority.Load(settings.PoolDirectoryFor(poolId), poolId);
                credential = authority.IssueCredential(PoolIdentity.Create(authority.PoolId, PoolRole.Member, nodeId));
            }
            else
            {
                throw new HostExitException(ExitCodes.CannotJoin,
                    $"node {nodeId} holds no certificate of pool {poolId} (looked in {identityDirectory}); join with an invite: " +
                    "`potluck node --join https://GATEWAY:PORT --token TOKEN` (the pool operator prints one with `potluck pool invite`)");
            }
        }
        catch (PoolSecurityException e)
        {
            throw new HostExitException(ExitCodes.CannotJoin, e.Message);
        }
        if (!credential.Identity.SamePool(poolId) || credential.Identity.NodeId != nodeId || credential.Identity.Role != PoolRole.Member)
        {
            var held = credential.Identity;
            credential.Dispose();
            throw new ConfigurationUsageException($"the credential in {identityDirectory} is for {held}, not member {nodeId} of pool {poolId}");
        }
        var trust = new PoolTrust(credential.Authority, credential.Identity.PoolId, new RevocationList());
        return new MemberSecurity(new RotatingCredential(credential), trust, null);
    }

    private static void CheckIds(string poolId, string nodeId)
    {
        if (!PoolIdentity.IsValidId(poolId)) throw new ConfigurationUsageException($"cluster id '{poolId}' is not a valid pool id: {PoolIdentity.IdRule}");
        if (!PoolIdentity.IsValidId(nodeId)) throw new ConfigurationUsageException($"node id '{nodeId}' is not valid: {PoolIdentity.IdRule}");
    }

    public void Dispose()
    {
        Credential.Dispose();
        Authority?.Dispose();
    }
}
