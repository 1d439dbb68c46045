using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Potluck.Security;

/// <summary>The outcome of checking a peer's certificate: its identity when trusted, else why not.</summary>
public readonly record struct TrustResult(bool Trusted, PoolIdentity Identity, string? Reason)
{
    public static TrustResult Refuse(string reason) => new(false, default, reason);
}

/// <summary>
/// What every member checks peers with: a certificate chains to this pool's CA only (no system roots), is within its
/// validity, names exactly one identity of this pool with an allowed role, and is not revoked. Every TLS validation
/// callback (Kestrel, gRPC clients, Orleans) goes through <see cref="Validate"/>.
/// </summary>
public sealed class PoolTrust
{
    private static readonly PoolRole[] MembersOnly = [PoolRole.Member];
    private readonly X509Certificate2 _authority;
    private readonly AsymmetricAlgorithm _verifyKey;

    public PoolTrust(X509Certificate2 authority, string poolId, RevocationList revocations, TimeProvider? clock = null)
    {
        _authority = authority;
        PoolId = poolId;
        Revocations = revocations;
        Clock = clock ?? TimeProvider.System;
        AuthorityFingerprint = PoolCertificates.Fingerprint(authority);
        _verifyKey = (AsymmetricAlgorithm?)authority.GetECDsaPublicKey() ?? authority.GetRSAPublicKey()
            ?? throw new PoolSecurityException("the pool CA key is neither ECDSA nor RSA");
    }

    public string PoolId { get; }
    public RevocationList Revocations { get; }
    public TimeProvider Clock { get; }
    public string AuthorityFingerprint { get; }
    public X509Certificate2 Authority => _authority;

    /// <summary>Checks a peer that must be a trusted member (a silo, a data-plane peer).</summary>
    public TrustResult ValidateMember(X509Certificate? presented) => Validate(presented, MembersOnly);

    public TrustResult Validate(X509Certificate? presented, params ReadOnlySpan<PoolRole> allowed)
    {
        if (presented is null) return TrustResult.Refuse("no client certificate was presented (pool members authenticate with their pool certificate)");
        using var owned = presented as X509Certificate2 is null ? X509CertificateLoader.LoadCertificate(presented.GetRawCertData()) : null;
        var certificate = owned ?? (X509Certificate2)presented;
        if (certificate.RawDataMemory.Span.SequenceEqual(_authority.RawDataMemory.Span)) return TrustResult.Refuse("the pool CA certificate itself is not a member certificate");
        using (var chain = new X509Chain())
        {
            chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            chain.ChainPolicy.CustomTrustStore.Add(_authority);
            chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            chain.ChainPolicy.DisableCertificateDownloads = true;
            chain.ChainPolicy.VerificationTime = Clock.GetUtcNow().UtcDateTime;
            chain.ChainPolicy.VerificationTimeIgnored = false;
            if (!chain.Build(certificate))
            {
                var status = chain.ChainStatus.Length > 0 ? string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Distinct()) : "untrusted";
                return TrustResult.Refuse($"the certificate {certificate.Subject} is not from this pool's CA or is not valid now ({status})");
            }
            // Custom root trust still accepts a chain ending at any root in the custom store; ours is the only one.
            var root = chain.ChainElements[^1].Certificate;
            if (!root.RawDataMemory.Span.SequenceEqual(_authority.RawDataMemory.Span))
                return TrustResult.Refuse("the certificate does not chain to this pool's CA");
        }
        if (PoolIdentity.FromCertificate(certificate) is not { } identity)
            return TrustResult.Refuse($"the certificate {certificate.Subject} names no single pool identity (SAN URI potluck://<pool>/<role>/<node-id>)");
        if (!identity.SamePool(PoolId)) return TrustResult.Refuse($"the certificate is for pool {identity.PoolId}, not {PoolId}");
        var roleAllowed = false;
        foreach (var role in allowed) roleAllowed |= role == identity.Role;
        if (!roleAllowed) return TrustResult.Refuse($"{identity} has role {PoolIdentity.RoleName(identity.Role)}, which may not do this");
        if (Revocations.IsRevoked(identity.NodeId)) return TrustResult.Refuse($"node {identity.NodeId} is revoked from pool {PoolId}");
        return new TrustResult(true, identity, null);
    }

    /// <summary>True when <paramref name="signature"/> is this pool CA's signature of a route ticket's claims.</summary>
    public bool VerifyTicket(ReadOnlySpan<byte> claims, ReadOnlySpan<byte> signature)
    {
        var data = PoolAuthority.Concat(PoolAuthority.TicketDomainBytes, claims);
        return _verifyKey switch
        {
            ECDsa ec => ec.VerifyData(data, signature, HashAlgorithmName.SHA256),
            RSA rsa => rsa.VerifyData(data, signature, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1),
            _ => false,
        };
    }
}
