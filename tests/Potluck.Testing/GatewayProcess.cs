using Xunit.Abstractions;

namespace Potluck.Testing;

/// <summary>
/// A real `potluck gateway` process on free loopback ports: its HTTP base address and its silo (the seed nodes
/// join through). Disposing sends SIGTERM, then kills it after <see cref="PotluckProcess.StopGrace"/>.
/// </summary>
public sealed class GatewayProcess : ChildProcess
{
    private GatewayProcess(string potluckHome, string modelPath, int port, int siloPort, int poolPort, IEnumerable<string> extraArguments, ITestOutputHelper? output)
        : base(PotluckProcess.StartInfo(["gateway", "--model", modelPath, "--port", $"{port}", "--silo-port", $"{siloPort}", "--pool-port", $"{poolPort}", .. extraArguments],
            potluckHome), "potluck gateway", output)
    {
        Port = port;
        SiloPort = siloPort;
        PoolPort = poolPort;
        PotluckHome = potluckHome;
        StopGrace = PotluckProcess.StopGrace;
    }

    public int Port { get; }
    public int SiloPort { get; }

    /// <summary>The pool endpoint's HTTPS port (enrolment, renewal, the members' join document).</summary>
    public int PoolPort { get; }

    public string PotluckHome { get; }

    /// <summary>https://127.0.0.1:pool-port, the pool endpoint.</summary>
    public string PoolUrl => $"https://127.0.0.1:{PoolPort}";
    /// <summary>http://127.0.0.1:port, what `potluck node --join` and clients are given.</summary>
    public string Url => $"http://127.0.0.1:{Port}";

    /// <summary>The gateway's silo endpoint (host:port), what `potluck node --join` also takes.</summary>
    public string Seed => $"127.0.0.1:{SiloPort}";

    /// <param name="extraArguments">More `potluck gateway` flags, e.g. ["--join", seed].</param>
    public static GatewayProcess Start(string potluckHome, string modelPath, IEnumerable<string>? extraArguments = null,
        ITestOutputHelper? output = null) =>
        new(potluckHome, modelPath, Ports.Free(), Ports.Free(), Ports.Free(), extraArguments ?? [], output);

    /// <summary>
    /// An HTTP client on <see cref="Url"/> that is also a pool member named <paramref name="nodeId"/>: requests to
    /// /api/pool/join and /api/pool/announce go to the pool endpoint with a member certificate issued from the gateway's
    /// CA directory (in its POTLUCK_HOME, pool <paramref name="poolId"/>), the rest to the API.
    /// </summary>
    public HttpClient CreateMemberClient(string nodeId = "test-member", string poolId = "potluck", TimeSpan? timeout = null) =>
        new(new MemberRouting(System.IO.Path.Combine(PotluckHome, "pools", poolId), poolId, nodeId, PoolPort))
        {
            BaseAddress = new Uri(Url),
            Timeout = timeout ?? TimeSpan.FromSeconds(30),
        };

    /// <summary>An HTTP client on <see cref="Url"/>.</summary>
    public HttpClient CreateClient(TimeSpan? timeout = null) =>
        new() { BaseAddress = new Uri(Url), Timeout = timeout ?? TimeSpan.FromSeconds(30) };
}

/// <summary>Sends the members' pool requests to the pool endpoint with a member certificate (made on first use: the gateway creates its CA when it starts).</summary>
internal sealed class MemberRouting(string poolDirectory, string poolId, string nodeId, int poolPort) : DelegatingHandler(new HttpClientHandler())
{
    private readonly Lazy<HttpMessageInvoker> _pool = new(() =>
    {
        using var authority = Potluck.Security.PoolAuthority.Load(poolDirectory, poolId);
        var credential = authority.IssueCredential(Potluck.Security.PoolIdentity.Create(authority.PoolId, Potluck.Security.PoolRole.Member, nodeId));
        var trust = new Potluck.Security.PoolTrust(credential.Authority, authority.PoolId, new Potluck.Security.RevocationList());
        return new HttpMessageInvoker(new SocketsHttpHandler
        {
            SslOptions = new System.Net.Security.SslClientAuthenticationOptions
            {
                ClientCertificates = [credential.Certificate],
                RemoteCertificateValidationCallback = (_, certificate, _, _) => trust.ValidateMember(certificate).Trusted,
            },
        });
    });

    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        if (request.RequestUri is { } uri && uri.AbsolutePath is "/api/pool/join" or "/api/pool/announce")
        {
            request.RequestUri = new UriBuilder(uri) { Scheme = "https", Port = poolPort }.Uri;
            return _pool.Value.SendAsync(request, cancellationToken);
        }
        return base.SendAsync(request, cancellationToken);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && _pool.IsValueCreated) _pool.Value.Dispose();
        base.Dispose(disposing);
    }
}
