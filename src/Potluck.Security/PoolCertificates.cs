using System.Formats.Asn1;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Potluck.Security;

/// <summary>Certificate plumbing shared by the authority, members and trust checks.</summary>
public static class PoolCertificates
{
    /// <summary>How long a member certificate lives; members renew at half-life (<see cref="MemberCredential.RenewAt"/>).</summary>
    public static readonly TimeSpan DefaultMemberLifetime = TimeSpan.FromHours(24);

    /// <summary>Certificates start this far in the past, so a member whose clock is a little behind accepts a fresh one.</summary>
    public static readonly TimeSpan ClockSkew = TimeSpan.FromMinutes(5);

    public static readonly Oid ServerAuth = new("1.3.6.1.5.5.7.3.1");
    public static readonly Oid ClientAuth = new("1.3.6.1.5.5.7.3.2");

    /// <summary>SHA-256 of the certificate's DER, lower-case hex: what join tokens pin.</summary>
    public static string Fingerprint(X509Certificate2 certificate) => Convert.ToHexStringLower(certificate.GetCertHash(HashAlgorithmName.SHA256));

    /// <summary>A SAN extension with the given URIs, DNS names and IP addresses.</summary>
    public static X509Extension SubjectAlternativeNames(IEnumerable<Uri> uris, IEnumerable<string>? dnsNames = null, IEnumerable<System.Net.IPAddress>? addresses = null)
    {
        var builder = new SubjectAlternativeNameBuilder();
        foreach (var uri in uris) builder.AddUri(uri);
        foreach (var dns in dnsNames ?? []) builder.AddDnsName(dns);
        foreach (var ip in addresses ?? []) builder.AddIpAddress(ip);
        return builder.Build(critical: false);
    }

    /// <summary>The pool id a CA certificate names (its SAN URI potluck://&lt;pool-id&gt;/), or null.</summary>
    public static string? PoolIdOfAuthority(X509Certificate2 authority)
    {
        foreach (var extension in authority.Extensions)
        {
            if (extension is not X509SubjectAlternativeNameExtension san) continue;
            var reader = new AsnReader(san.RawData, AsnEncodingRules.DER).ReadSequence();
            var uriTag = new Asn1Tag(TagClass.ContextSpecific, 6);
            while (reader.HasData)
            {
                if (reader.PeekTag() != uriTag)
                {
                    reader.ReadEncodedValue();
                    continue;
                }
                var text = reader.ReadCharacterString(UniversalTagNumber.IA5String, uriTag);
                if (Uri.TryCreate(text, UriKind.Absolute, out var uri) && uri.Scheme == PoolIdentity.Scheme && uri.AbsolutePath == "/" && PoolIdentity.IsValidId(uri.Host))
                    return uri.Host;
            }
        }
        return null;
    }

    public static string ToPem(X509Certificate2 certificate) => certificate.ExportCertificatePem() + "\n";

    /// <summary>The private key of <paramref name="certificate"/> as PKCS#8 PEM (ECDSA or RSA).</summary>
    public static string PrivateKeyPem(X509Certificate2 certificate)
    {
        using AsymmetricAlgorithm key = (AsymmetricAlgorithm?)certificate.GetECDsaPrivateKey() ?? certificate.GetRSAPrivateKey()
            ?? throw new PoolSecurityException($"the certificate {certificate.Subject} has no ECDSA or RSA private key");
        return key.ExportPkcs8PrivateKeyPem() + "\n";
    }

    /// <summary>Loads a certificate and its key from PEM files, as a certificate TLS can use on every platform.</summary>
    public static X509Certificate2 LoadWithKey(string certificatePath, string keyPath)
    {
        try
        {
            using var loaded = X509Certificate2.CreateFromPemFile(certificatePath, keyPath);
            // Round-trip through PKCS#12 so the key is usable by SslStream on every platform, not only ephemeral.
            return X509CertificateLoader.LoadPkcs12(loaded.Export(X509ContentType.Pkcs12), null);
        }
        catch (CryptographicException e)
        {
            throw new PoolSecurityException($"cannot read the certificate {certificatePath} with key {keyPath}: {e.Message}", e);
        }
    }

    public static X509Certificate2 LoadCertificate(string path)
    {
        try
        {
            using var pem = X509Certificate2.CreateFromPem(SecureFiles.ReadText(path));
            return X509CertificateLoader.LoadCertificate(pem.RawData);
        }
        catch (CryptographicException e)
        {
            throw new PoolSecurityException($"{path} is not a PEM certificate: {e.Message}", e);
        }
    }

    /// <summary>A new member key: ECDSA P-256 (small handshakes, fast signatures).</summary>
    public static ECDsa NewKey() => ECDsa.Create(ECCurve.NamedCurves.nistP256);
}
