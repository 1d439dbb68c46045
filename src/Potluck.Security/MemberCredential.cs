using System.Security.Cryptography.X509Certificates;

namespace Potluck.Security;

/// <summary>
/// A member's own certificate (with its private key) and the pool CA certificate it trusts. On disk: member.crt,
/// member.key (0600) and ca.crt in the member's identity directory.
/// </summary>
public sealed class MemberCredential : IDisposable
{
    public const string CertificateFile = "member.crt";
    public const string KeyFile = "member.key";
    public const string AuthorityFile = "ca.crt";

    /// <exception cref="PoolSecurityException">The certificate names no pool identity, or has no private key.</exception>
    public MemberCredential(X509Certificate2 certificate, X509Certificate2 authority)
    {
        if (!certificate.HasPrivateKey) throw new PoolSecurityException($"the member certificate {certificate.Subject} has no private key");
        Identity = PoolIdentity.FromCertificate(certificate)
            ?? throw new PoolSecurityException($"the certificate {certificate.Subject} names no pool identity (a SAN URI potluck://<pool>/member/<node-id>)");
        Certificate = certificate;
        Authority = authority;
    }

    public PoolIdentity Identity { get; }
    public X509Certificate2 Certificate { get; }
    public X509Certificate2 Authority { get; }
    public DateTimeOffset NotBefore => new(Certificate.NotBefore.ToUniversalTime(), TimeSpan.Zero);
    public DateTimeOffset NotAfter => new(Certificate.NotAfter.ToUniversalTime(), TimeSpan.Zero);

    /// <summary>Half-way through its life: renewing then leaves the other half to ride out a CA holder that is down.</summary>
    public DateTimeOffset RenewAt => NotBefore + (NotAfter - NotBefore) / 2;

    public string AuthorityFingerprint => PoolCertificates.Fingerprint(Authority);

    public static bool Exists(string directory) =>
        File.Exists(Path.Combine(directory, CertificateFile)) && File.Exists(Path.Combine(directory, KeyFile)) && File.Exists(Path.Combine(directory, AuthorityFile));

    /// <exception cref="PoolSecurityException">Missing or unreadable files.</exception>
    public static MemberCredential Load(string directory)
    {
        if (!Exists(directory))
            throw new PoolSecurityException($"{directory} holds no member credential ({CertificateFile}, {KeyFile}, {AuthorityFile}); join with a token (`potluck node --join URL --token TOKEN`)");
        var certificate = PoolCertificates.LoadWithKey(Path.Combine(directory, CertificateFile), Path.Combine(directory, KeyFile));
        return new MemberCredential(certificate, PoolCertificates.LoadCertificate(Path.Combine(directory, AuthorityFile)));
    }

    /// <summary>
    /// A new key pair and a PKCS#10 request (DER) for it: what a member sends to enrol or renew. The key stays here;
    /// pass it to <see cref="FromIssued"/> with the authority's answer.
    /// </summary>
    public static (System.Security.Cryptography.ECDsa Key, byte[] Request) CreateRequest(PoolIdentity identity)
    {
        var key = PoolCertificates.NewKey();
        var request = new CertificateRequest($"CN={identity.NodeId}", key, System.Security.Cryptography.HashAlgorithmName.SHA256);
        return (key, request.CreateSigningRequest());
    }

    /// <summary>The credential from an issued certificate (PEM), the pool CA (PEM) and the key the request was made with.</summary>
    /// <exception cref="PoolSecurityException">The certificate is not for that key, or either PEM does not parse.</exception>
    public static MemberCredential FromIssued(string certificatePem, string authorityPem, System.Security.Cryptography.ECDsa key)
    {
        try
        {
            using var issued = X509Certificate2.CreateFromPem(certificatePem);
            using var withKey = issued.CopyWithPrivateKey(key);
            using var authority = X509Certificate2.CreateFromPem(authorityPem);
            return new MemberCredential(X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null),
                X509CertificateLoader.LoadCertificate(authority.RawData));
        }
        catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or ArgumentException)
        {
            throw new PoolSecurityException($"the issued certificate does not match this node's key or does not parse: {e.Message}", e);
        }
    }

    public void Save(string directory)
    {
        SecureFiles.CreatePrivateDirectory(directory);
        SecureFiles.WriteText(Path.Combine(directory, KeyFile), PoolCertificates.PrivateKeyPem(Certificate), secret: true);
        SecureFiles.WriteText(Path.Combine(directory, CertificateFile), PoolCertificates.ToPem(Certificate), secret: false);
        SecureFiles.WriteText(Path.Combine(directory, AuthorityFile), PoolCertificates.ToPem(Authority), secret: false);
    }

    public void Dispose()
    {
        Certificate.Dispose();
        Authority.Dispose();
    }
}
