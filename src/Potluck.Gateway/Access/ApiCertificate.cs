using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Potluck.Hosting;

namespace Potluck.Gateway.Access;

/// <summary>
/// The certificate the public API serves HTTPS with, asked for on every TLS handshake, so a source that renews its
/// certificate (one issued by the pool CA, renewed at half-life) is picked up without a restart. Set
/// <see cref="GatewayOptions.ApiCertificate"/> to one; <c>--tls-cert</c>/<c>--tls-key</c> make a
/// <see cref="PemFileCertificateSource"/>.
/// </summary>
public interface IApiCertificateSource
{
    /// <summary>The certificate, with its private key.</summary>
    X509Certificate2 Current { get; }

    /// <summary>Intermediate certificates sent after <see cref="Current"/> (none by default).</summary>
    X509Certificate2Collection? Chain => null;
}

/// <summary>An operator's certificate and key from PEM files, read once at start; further certificates in the file are its chain.</summary>
public sealed class PemFileCertificateSource : IApiCertificateSource
{
    public PemFileCertificateSource(string certificateFile, string keyFile)
    {
        try
        {
            Current = X509Certificate2.CreateFromPemFile(certificateFile, keyFile);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new ConfigurationUsageException($"cannot use the TLS certificate {certificateFile} with key {keyFile}: {e.Message}");
        }
        if (!Current.HasPrivateKey)
            throw new ConfigurationUsageException($"the TLS key {keyFile} does not hold the private key of {certificateFile}");
        if (Current.NotAfter < DateTime.Now)
            throw new ConfigurationUsageException($"the TLS certificate {certificateFile} expired on {Current.NotAfter:u}");
        var all = new X509Certificate2Collection();
        all.ImportFromPemFile(certificateFile);
        Chain = [];
        foreach (var certificate in all)
            if (certificate.Thumbprint != Current.Thumbprint) Chain.Add(certificate);
    }

    public X509Certificate2 Current { get; }

    public X509Certificate2Collection Chain { get; }
}
