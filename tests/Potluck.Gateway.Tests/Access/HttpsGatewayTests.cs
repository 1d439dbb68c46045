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

    /// <summary>The root the operator's certificate chains to through an intermediate (sent by the gateway).</summary>
    public X509Certificate2 Root { get; private set; } = null!;

    protected override GatewayOptions Configure(GatewayOptions options)
    {
        var now = DateTimeOffset.UtcNow;
        using var rootKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        Root = Authority("CN=potluck test root", rootKey, issuer: null, now);
        using var intermediateKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var intermediate = Authority("CN=potluck test intermediate", intermediateKey, Root, now);
        using var intermediateWithKey = intermediate.CopyWithPrivateKey(intermediateKey);

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=potluck test gateway", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], critical: false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(intermediate, true, false));
        Certificate = request.Create(intermediateWithKey, now.AddMinutes(-5), now.AddDays(1), [1, 2, 3, 4]);
        var certFile = Path.Combine(Directory, "cert.pem");
        var keyFile = Path.Combine(Directory, "key.pem");
        // The operator's usual file: the certificate, then its intermediate.
        File.WriteAllText(certFile, Certificate.ExportCertificatePem() + "\n" + intermediate.ExportCertificatePem());
        File.WriteAllText(keyFile, key.ExportPkcs8PrivateKeyPem());
        return options with { TlsCertificateFile = certFile, TlsKeyFile = keyFile, ApiKeys = [ApiKey], AdminKey = AdminKey };
    }

    private static X509Certificate2 Authority(string name, ECDsa key, X509Certificate2? issuer, DateTimeOffset now)
    {
        var request = new CertificateRequest(name, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        if (issuer is null) return request.CreateSelfSigned(now.AddMinutes(-10), now.AddDays(2));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(issuer, true, false));
        return request.Create(issuer, now.AddMinutes(-10), now.AddDays(2), [5, 6, 7, 8]);
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
    public async Task The_gateway_sends_the_intermediate_so_a_client_trusting_only_the_root_validates_it()
    {
        var handler = new SocketsHttpHandler();
        var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
        policy.CustomTrustStore.Add(gateway.Root);
        handler.SslOptions.CertificateChainPolicy = policy;
        SslPolicyErrors? errors = null;
        int? length = null;
        handler.SslOptions.RemoteCertificateValidationCallback = (_, _, chain, problems) =>
        {
            errors = problems;
            length = chain?.ChainElements.Count;
            return problems == SslPolicyErrors.None;
        };
        using var http = new HttpClient(handler) { BaseAddress = gateway.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        using var health = await http.GetAsync("healthz");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        Assert.Equal(SslPolicyErrors.None, errors);
        Assert.Equal(3, length);
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
