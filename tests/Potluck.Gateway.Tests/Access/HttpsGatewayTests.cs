using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Potluck.Gateway.Tests.Access;

/// <summary>HTTPS on the API port with an operator's certificate: a self-signed one made here, as PEM files.</summary>
public sealed class HttpsGateway : AccessGateway
{
    public const string ApiKey = "tls-client-key-01";
    public const string AdminKey = "tls-admin-key-001";
    public X509Certificate2 Certificate { get; private set; } = null!;

    protected override GatewayOptions Configure(GatewayOptions options)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=potluck test gateway", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], critical: false));
        Certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        var certFile = Path.Combine(Directory, "cert.pem");
        var keyFile = Path.Combine(Directory, "key.pem");
        File.WriteAllText(certFile, Certificate.ExportCertificatePem());
        File.WriteAllText(keyFile, key.ExportPkcs8PrivateKeyPem());
        return options with { TlsCertificateFile = certFile, TlsKeyFile = keyFile, ApiKeys = [ApiKey], AdminKey = AdminKey };
    }

    /// <summary>Trusts exactly the test certificate.</summary>
    public override HttpClient Client(HttpMessageHandler? handler = null)
    {
        var sockets = handler as SocketsHttpHandler ?? new SocketsHttpHandler();
        sockets.SslOptions.RemoteCertificateValidationCallback = (_, presented, _, _) =>
            presented is not null && presented.GetCertHashString() == Certificate.GetCertHashString();
        return base.Client(sockets);
    }
}

[ProcessTest]
public sealed class HttpsGatewayTests(HttpsGateway gateway) : IClassFixture<HttpsGateway>
{
    [Fact]
    public async Task The_api_serves_https_with_the_operators_certificate_and_refuses_plaintext()
    {
        Assert.Equal("https", gateway.BaseAddress.Scheme);
        X509Certificate2? seen = null;
        var handler = new SocketsHttpHandler();
        using var http = gateway.Client(handler);
        var validate = handler.SslOptions.RemoteCertificateValidationCallback!;
        handler.SslOptions.RemoteCertificateValidationCallback = (sender, certificate, chain, errors) =>
        {
            seen = certificate is null ? null : new X509Certificate2(certificate);
            return validate(sender, certificate, chain, errors);
        };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", HttpsGateway.ApiKey);
        using var models = await http.GetAsync("v1/models");
        Assert.Equal(HttpStatusCode.OK, models.StatusCode);
        Assert.Equal(gateway.Certificate.Thumbprint, seen?.Thumbprint);

        // The key never crosses in plaintext: plain HTTP on the same port gets no answer.
        using var plain = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        plain.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", HttpsGateway.ApiKey);
        var plainUrl = new UriBuilder(gateway.BaseAddress) { Scheme = "http" }.Uri;
        HttpResponseMessage? answer = null;
        try
        {
            answer = await plain.GetAsync(new Uri(plainUrl, "v1/models"));
        }
        catch (HttpRequestException)
        {
        }
        Assert.True(answer is null || answer.StatusCode != HttpStatusCode.OK, $"plain HTTP answered {answer?.StatusCode}");

        // A client that does not trust the certificate fails the handshake.
        using var strict = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        await Assert.ThrowsAsync<HttpRequestException>(() => strict.GetAsync(new Uri(gateway.BaseAddress, "healthz")));
    }

    [Fact]
    public async Task The_dashboard_cookie_is_secure_over_https()
    {
        using var browser = gateway.Client(new SocketsHttpHandler { CookieContainer = new CookieContainer(), AllowAutoRedirect = false });
        using var login = await browser.PostAsync("login", new FormUrlEncodedContent([new("key", HttpsGateway.AdminKey)]));
        Assert.Equal(HttpStatusCode.SeeOther, login.StatusCode);
        var attributes = Assert.Single(login.Headers.GetValues("Set-Cookie")).Split(';', StringSplitOptions.TrimEntries).Skip(1).ToList();
        Assert.Contains("secure", attributes, StringComparer.OrdinalIgnoreCase);
        Assert.Contains("httponly", attributes, StringComparer.OrdinalIgnoreCase);
        Assert.Equal(HttpStatusCode.OK, (await browser.GetAsync("api/pool")).StatusCode);
    }
}
