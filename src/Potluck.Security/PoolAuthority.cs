using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Potluck.Security;

/// <summary>
/// The pool's certificate authority, held by the gateway (or `potluck pool` on the same data directory). It issues
/// every member's short-lived certificate, keeps the invites and the revocation list, and signs route tickets.
/// Files in its directory: ca.crt, ca.key (0600), tokens.json (hashed secrets), revoked.json.
/// </summary>
public sealed class PoolAuthority : IDisposable
{
    public const string CertificateFile = "ca.crt";
    public const string KeyFile = "ca.key";
    public const string TokensFile = "tokens.json";
    public const string RevokedFile = "revoked.json";

    /// <summary>Domain separation: a ticket signature can never be mistaken for any other signature of this key.</summary>
    private static readonly byte[] TicketDomain = "potluck/route-ticket/v1\0"u8.ToArray();

    private static readonly TimeSpan AuthorityLifetime = TimeSpan.FromDays(3650);
    private readonly AsymmetricAlgorithm _key;

    private PoolAuthority(string directory, string poolId, X509Certificate2 certificate, AsymmetricAlgorithm key)
    {
        Directory = directory;
        PoolId = poolId;
        Certificate = certificate;
        _key = key;
        Fingerprint = PoolCertificates.Fingerprint(certificate);
        Tokens = new JoinTokenStore(System.IO.Path.Combine(directory, TokensFile), poolId, Fingerprint);
        Revocations = RevocationList.Open(System.IO.Path.Combine(directory, RevokedFile));
        Trust = new PoolTrust(certificate, poolId, Revocations);
    }

    public string Directory { get; }
    public string PoolId { get; }

    /// <summary>The CA certificate (public part only: what members trust).</summary>
    public X509Certificate2 Certificate { get; }

    public string Fingerprint { get; }
    public JoinTokenStore Tokens { get; }
    public RevocationList Revocations { get; }

    /// <summary>Checks against this authority and its revocation list.</summary>
    public PoolTrust Trust { get; }

    public static bool Exists(string directory) =>
        File.Exists(System.IO.Path.Combine(directory, CertificateFile)) && File.Exists(System.IO.Path.Combine(directory, KeyFile));

    /// <summary>Loads the authority in <paramref name="directory"/>, creating it (ECDSA P-256, 10 years) when there is none.</summary>
    public static PoolAuthority LoadOrCreate(string directory, string poolId) =>
        Exists(directory) ? Load(directory, poolId) : Create(directory, poolId);

    /// <exception cref="PoolSecurityException">An authority already exists there, or the id is invalid.</exception>
    public static PoolAuthority Create(string directory, string poolId)
    {
        if (!PoolIdentity.IsValidId(poolId)) throw new PoolSecurityException($"'{poolId}' is not a valid pool id: {PoolIdentity.IdRule}");
        if (Exists(directory)) throw new PoolSecurityException($"{directory} already holds a pool authority; use it, or choose another directory");
        using var key = PoolCertificates.NewKey();
        var request = new CertificateRequest($"CN=Potluck pool {poolId} CA, O=Potluck", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(certificateAuthority: true, hasPathLengthConstraint: true, pathLengthConstraint: 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign | X509KeyUsageFlags.DigitalSignature, critical: true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        request.CertificateExtensions.Add(PoolCertificates.SubjectAlternativeNames([new Uri($"{PoolIdentity.Scheme}://{poolId}/")]));
        var now = DateTimeOffset.UtcNow;
        using var authority = request.CreateSelfSigned(now - PoolCertificates.ClockSkew, now + AuthorityLifetime);
        SecureFiles.CreatePrivateDirectory(directory);
        // Key first: a crash in between leaves no certificate without its key.
        SecureFiles.WriteText(System.IO.Path.Combine(directory, KeyFile), key.ExportPkcs8PrivateKeyPem() + "\n", secret: true);
        SecureFiles.WriteText(System.IO.Path.Combine(directory, CertificateFile), PoolCertificates.ToPem(authority), secret: false);
        return Load(directory, poolId);
    }

    /// <summary>
    /// Loads an existing authority (ECDSA or RSA, e.g. one an operator or Helm made). Its pool id is the one its
    /// certificate names (SAN potluck://&lt;pool-id&gt;/), else <paramref name="poolId"/>.
    /// </summary>
    public static PoolAuthority Load(string directory, string? poolId = null)
    {
        var certificatePath = System.IO.Path.Combine(directory, CertificateFile);
        var keyPath = System.IO.Path.Combine(directory, KeyFile);
        if (!Exists(directory)) throw new PoolSecurityException($"{directory} holds no pool authority ({CertificateFile} and {KeyFile}); create one with `potluck pool init --dir {directory}`");
        var certificate = PoolCertificates.LoadCertificate(certificatePath);
        var named = PoolCertificates.PoolIdOfAuthority(certificate);
        if (named is not null && poolId is not null && !named.Equals(poolId, StringComparison.OrdinalIgnoreCase))
            throw new PoolSecurityException($"the authority in {directory} belongs to pool '{named}', not '{poolId}'");
        var id = named ?? poolId ?? throw new PoolSecurityException($"the authority in {directory} names no pool id; pass one");
        if (certificate.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is not { CertificateAuthority: true })
            throw new PoolSecurityException($"{certificatePath} is not a CA certificate (no basic constraints CA:true)");
        AsymmetricAlgorithm key;
        try
        {
            var pem = SecureFiles.ReadText(keyPath);
            key = certificate.GetECDsaPublicKey() is { } ec ? LoadEc(ec, pem) : LoadRsa(certificate, pem);
        }
        catch (CryptographicException e)
        {
            throw new PoolSecurityException($"cannot read the CA key {keyPath}: {e.Message}", e);
        }
        return new PoolAuthority(directory, id.ToLowerInvariant(), certificate, key);
    }

    private static ECDsa LoadEc(ECDsa publicKey, string pem)
    {
        publicKey.Dispose();
        var key = ECDsa.Create();
        key.ImportFromPem(pem);
        return key;
    }

    private static RSA LoadRsa(X509Certificate2 certificate, string pem)
    {
        using var publicKey = certificate.GetRSAPublicKey() ?? throw new PoolSecurityException("the CA key is neither ECDSA nor RSA");
        var key = RSA.Create();
        key.ImportFromPem(pem);
        return key;
    }

    /// <summary>
    /// A certificate for <paramref name="identity"/> on <paramref name="publicKey"/> (from the member's request; the
    /// member's private key never leaves it). Server and client auth, so a member both dials and is dialled.
    /// </summary>
    public X509Certificate2 Issue(PoolIdentity identity, PublicKey publicKey, TimeSpan lifetime, IEnumerable<string>? dnsNames = null,
        IEnumerable<System.Net.IPAddress>? addresses = null)
    {
        if (!identity.SamePool(PoolId)) throw new PoolSecurityException($"{identity} is not of pool {PoolId}");
        if (Revocations.IsRevoked(identity.NodeId)) throw new PoolSecurityException($"node {identity.NodeId} is revoked from pool {PoolId}");
        if (lifetime <= TimeSpan.Zero || lifetime > TimeSpan.FromDays(30)) throw new ArgumentOutOfRangeException(nameof(lifetime), "a member certificate lives up to 30 days");
        var request = new CertificateRequest(SubjectOf(identity), publicKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([PoolCertificates.ServerAuth, PoolCertificates.ClientAuth], critical: false));
        request.CertificateExtensions.Add(PoolCertificates.SubjectAlternativeNames([identity.ToUri()], dnsNames, addresses));
        // CAs made elsewhere (Helm's genCA) may lack a subject key identifier; the key id is optional then.
        if (Certificate.Extensions.OfType<X509SubjectKeyIdentifierExtension>().Any())
            request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(Certificate, includeKeyIdentifier: true, includeIssuerAndSerial: false));
        var now = DateTimeOffset.UtcNow;
        var notAfter = now + lifetime;
        if (notAfter > Certificate.NotAfter) notAfter = Certificate.NotAfter;
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        var generator = _key is ECDsa ec ? X509SignatureGenerator.CreateForECDsa(ec) : X509SignatureGenerator.CreateForRSA((RSA)_key, RSASignaturePadding.Pkcs1);
        return request.Create(Certificate.SubjectName, generator, now - PoolCertificates.ClockSkew, notAfter, serial);
    }

    /// <summary>
    /// A certificate for <paramref name="identity"/> on the public key of a PKCS#10 request (DER), whose signature
    /// proves the requester holds the private key. The request's subject and extensions are ignored: the identity is
    /// what the authority decided (from the token, or the renewing member's certificate).
    /// </summary>
    /// <exception cref="PoolSecurityException">The request does not parse or its signature does not verify.</exception>
    public X509Certificate2 IssueForRequest(PoolIdentity identity, ReadOnlySpan<byte> requestDer, TimeSpan? lifetime = null)
    {
        CertificateRequest request;
        try
        {
            request = CertificateRequest.LoadSigningRequest(requestDer, HashAlgorithmName.SHA256, out var read, CertificateRequestLoadOptions.Default);
            if (read != requestDer.Length) throw new PoolSecurityException("the certificate request has trailing bytes");
        }
        catch (CryptographicException e)
        {
            throw new PoolSecurityException($"the certificate request is not a valid signed PKCS#10 request: {e.Message}", e);
        }
        var algorithm = request.PublicKey.Oid.Value;
        if (algorithm is not ("1.2.840.10045.2.1" or "1.2.840.113549.1.1.1"))
            throw new PoolSecurityException($"the certificate request's key ({request.PublicKey.Oid.FriendlyName ?? algorithm}) is neither ECDSA nor RSA");
        return Issue(identity, request.PublicKey, lifetime ?? PoolCertificates.DefaultMemberLifetime);
    }

    /// <summary>A whole credential (new key pair plus certificate): for this gateway itself, `serve`'s children and tests.</summary>
    public MemberCredential IssueCredential(PoolIdentity identity, TimeSpan? lifetime = null, IEnumerable<string>? dnsNames = null,
        IEnumerable<System.Net.IPAddress>? addresses = null)
    {
        using var key = PoolCertificates.NewKey();
        var request = new CertificateRequest("CN=x", key, HashAlgorithmName.SHA256);
        using var issued = Issue(identity, request.PublicKey, lifetime ?? PoolCertificates.DefaultMemberLifetime, dnsNames, addresses);
        using var withKey = issued.CopyWithPrivateKey(key);
        return new MemberCredential(X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null), X509CertificateLoader.LoadCertificate(Certificate.RawData));
    }

    /// <summary>Signs a route ticket's claims (domain-separated). Verify with <see cref="PoolTrust.VerifyTicket"/>.</summary>
    public byte[] SignTicket(ReadOnlySpan<byte> claims)
    {
        var data = Concat(TicketDomain, claims);
        return _key switch
        {
            ECDsa ec => ec.SignData(data, HashAlgorithmName.SHA256),
            RSA rsa => rsa.SignData(data, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1),
            _ => throw new InvalidOperationException("unsupported CA key"),
        };
    }

    internal static byte[] Concat(ReadOnlySpan<byte> domain, ReadOnlySpan<byte> claims)
    {
        var data = new byte[domain.Length + claims.Length];
        domain.CopyTo(data);
        claims.CopyTo(data.AsSpan(domain.Length));
        return data;
    }

    internal static ReadOnlySpan<byte> TicketDomainBytes => TicketDomain;

    public void Dispose()
    {
        _key.Dispose();
        Certificate.Dispose();
    }

    /// <summary>The subject of a member certificate (informational; the identity is the SAN URI).</summary>
    private static X500DistinguishedName SubjectOf(PoolIdentity identity)
    {
        var builder = new X500DistinguishedNameBuilder();
        builder.AddOrganizationName($"Potluck pool {identity.PoolId}");
        builder.AddOrganizationalUnitName(PoolIdentity.RoleName(identity.Role));
        builder.AddCommonName(identity.NodeId);
        return builder.Build();
    }
}
