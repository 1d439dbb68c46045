using System.Security.Cryptography.X509Certificates;

namespace Potluck.Security;

/// <summary>
/// How a joiner that has only a token trusts a gateway: the CA it is offered must have exactly the token's SHA-256
/// fingerprint, and the gateway's certificate must be a valid member certificate of that CA and pool. Nothing is sent
/// to the gateway before this holds.
/// </summary>
public static class PoolPinning
{
    /// <summary>Parses a CA certificate (PEM) and checks it against <paramref name="fingerprint"/>; null with <paramref name="reason"/> when it differs.</summary>
    public static X509Certificate2? PinnedAuthority(string authorityPem, string fingerprint, out string? reason)
    {
        X509Certificate2 authority;
        try
        {
            using var pem = X509Certificate2.CreateFromPem(authorityPem);
            authority = X509CertificateLoader.LoadCertificate(pem.RawData);
        }
        catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or ArgumentException)
        {
            reason = $"the gateway's pool CA certificate does not parse: {e.Message}";
            return null;
        }
        var actual = PoolCertificates.Fingerprint(authority);
        if (!string.Equals(actual, fingerprint, StringComparison.OrdinalIgnoreCase))
        {
            authority.Dispose();
            reason = $"the gateway's pool CA (SHA-256 {actual[..16]}…) is not the one the token names ({fingerprint[..Math.Min(16, fingerprint.Length)]}…): " +
                "the token is for another pool, or something between you and the gateway is impersonating it";
            return null;
        }
        reason = null;
        return authority;
    }

    /// <summary>
    /// The CA of the presented chain whose fingerprint is <paramref name="fingerprint"/> (servers on Windows and macOS
    /// send it; Linux servers never send a self-signed root, so callers also take it from the public join document).
    /// </summary>
    public static X509Certificate2? FindInChain(X509Chain? chain, string fingerprint)
    {
        if (chain is null) return null;
        foreach (var candidate in chain.ChainPolicy.ExtraStore)
            if (PoolCertificates.Fingerprint(candidate).Equals(fingerprint, StringComparison.OrdinalIgnoreCase)) return candidate;
        foreach (var element in chain.ChainElements)
            if (PoolCertificates.Fingerprint(element.Certificate).Equals(fingerprint, StringComparison.OrdinalIgnoreCase)) return element.Certificate;
        return null;
    }

    /// <summary>Checks the gateway's server certificate: a member certificate of <paramref name="poolId"/> issued by <paramref name="authority"/>.</summary>
    public static TrustResult ValidateServer(X509Certificate? presented, X509Certificate2 authority, string poolId) =>
        new PoolTrust(authority, poolId, new RevocationList()).ValidateMember(presented);
}
