using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Potluck.Cluster.Joining;
using Potluck.Security;

namespace Potluck.Node.Joining;

/// <summary>The gateway could not be asked, or did not answer like a Potluck gateway; the message says which.</summary>
public sealed class PoolJoinException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The gateway refused this node (HTTP 401/403: a used, expired or foreign token, a revoked node); the message is the gateway's.</summary>
public sealed class PoolRefusedException(string message) : Exception(message);

/// <summary>
/// A node's requests to its pool's gateway, each with a bounded wait: the public join document (GET /api/join on the
/// API or the pool endpoint), enrolment with a token over TLS pinned to the token's CA, and, with a member certificate
/// (mutual TLS), the members' join document, announcements and renewal.
/// </summary>
public static class PoolJoinClient
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    /// <summary>True when <paramref name="join"/> names a gateway URL (http:// or https://) rather than a seed silo HOST:PORT.</summary>
    public static bool IsGatewayUrl(string join) =>
        join.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || join.StartsWith("https://", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// GET /api/join at <paramref name="gateway"/> (the public API or the pool endpoint). Its server certificate is not
    /// checked here: the document is public, and everything that follows is pinned to the pool CA it carries only
    /// after that CA matched a token's fingerprint or the CA this node already trusts.
    /// </summary>
    public static async Task<PublicJoinInfo> FetchPublicAsync(Uri gateway, TimeSpan timeout, CancellationToken ct)
    {
        var url = new Uri(gateway, PublicJoinInfo.Path);
        using var http = new HttpClient(new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions { RemoteCertificateValidationCallback = (_, _, _, _) => true },
        }) { Timeout = Timeout.InfiniteTimeSpan };
        var body = await SendAsync(http, () => new HttpRequestMessage(HttpMethod.Get, url), gateway, timeout, ct, notFound:
            $"{gateway} does not serve {PublicJoinInfo.Path}: is it a Potluck gateway (of this version)?");
        try
        {
            return PublicJoinInfo.Parse(body);
        }
        catch (FormatException e)
        {
            throw new PoolJoinException($"{url} did not answer like a Potluck gateway: {e.Message}", e);
        }
    }

    /// <summary>
    /// Redeems <paramref name="token"/> for this node's first certificate: a fresh key made here (it never leaves this
    /// machine), a signed request for it, sent over TLS to a gateway whose certificate is a member certificate of
    /// <paramref name="authority"/> (already checked against the token's fingerprint).
    /// </summary>
    /// <exception cref="PoolRefusedException">The gateway refused the token or the node id.</exception>
    public static async Task<MemberCredential> EnrollAsync(Uri poolUrl, X509Certificate2 authority, JoinToken token, string nodeId, TimeSpan timeout, CancellationToken ct)
    {
        var identity = PoolIdentity.Create(token.PoolId, token.Role, nodeId);
        var (key, request) = MemberCredential.CreateRequest(identity);
        using (key)
        {
            using var http = new HttpClient(Handler(authority, token.PoolId, null)) { Timeout = Timeout.InfiniteTimeSpan };
            var body = await SendAsync(http, () => Post(new Uri(poolUrl, EnrollRequest.EnrollPath),
                new EnrollRequest(token.ToString(), nodeId, Convert.ToBase64String(request)).ToJson()), poolUrl, timeout, ct);
            return Issued(body, key, identity);
        }
    }

    /// <summary>A fresh certificate for the same identity (mutual TLS with the current one).</summary>
    public static async Task<MemberCredential> RenewAsync(Uri poolUrl, MemberCredential current, TimeSpan timeout, CancellationToken ct)
    {
        var (key, request) = MemberCredential.CreateRequest(current.Identity);
        using (key)
        {
            using var http = MemberClient(current);
            var body = await SendAsync(http, () => Post(new Uri(poolUrl, EnrollRequest.RenewPath),
                new EnrollRequest(null, current.Identity.NodeId, Convert.ToBase64String(request)).ToJson()), poolUrl, timeout, ct);
            return Issued(body, key, current.Identity);
        }
    }

    /// <summary>The members' join document (GET /api/pool/join with this node's certificate).</summary>
    public static async Task<PoolJoinInfo> FetchAsync(Uri poolUrl, MemberCredential credential, TimeSpan timeout, CancellationToken ct)
    {
        var url = new Uri(poolUrl, PoolJoinInfo.Path);
        using var http = MemberClient(credential);
        var body = await SendAsync(http, () => new HttpRequestMessage(HttpMethod.Get, url), poolUrl, timeout, ct,
            notFound: $"{poolUrl} does not serve {PoolJoinInfo.Path}: is it a Potluck gateway's pool endpoint (of this version)?");
        try
        {
            return PoolJoinInfo.Parse(body);
        }
        catch (FormatException e)
        {
            throw new PoolJoinException($"{url} did not answer like a Potluck gateway: {e.Message}", e);
        }
    }

    /// <summary>
    /// Tells the gateway this node is about to load a span (POST /api/pool/announce), so /api/pool shows it as joining
    /// and nodes choosing meanwhile count the span as taken.
    /// </summary>
    /// <exception cref="PoolJoinException">Unreachable, refused (the message carries the gateway's error), or an older gateway.</exception>
    public static async Task<JoinAnnouncementAccepted> AnnounceAsync(Uri poolUrl, MemberCredential credential, JoinAnnouncement announcement, TimeSpan timeout,
        CancellationToken ct)
    {
        var url = new Uri(poolUrl, JoinAnnouncement.Path);
        using var http = MemberClient(credential);
        string body;
        try
        {
            body = await SendAsync(http, () => Post(url, announcement.ToJson()), poolUrl, timeout, ct,
                notFound: $"{poolUrl} does not take announcements at {JoinAnnouncement.Path} (an older gateway)");
        }
        catch (PoolRefusedException e)
        {
            throw new PoolJoinException(e.Message);
        }
        try
        {
            return JoinAnnouncementAccepted.Parse(body);
        }
        catch (FormatException e)
        {
            throw new PoolJoinException($"{url} did not answer like a Potluck gateway: {e.Message}", e);
        }
    }

    /// <summary>An HTTP client presenting <paramref name="credential"/> and trusting only member certificates of its pool CA.</summary>
    public static HttpClient MemberClient(MemberCredential credential) =>
        new(Handler(credential.Authority, credential.Identity.PoolId, credential.Certificate)) { Timeout = Timeout.InfiniteTimeSpan };

    private static SocketsHttpHandler Handler(X509Certificate2 authority, string poolId, X509Certificate2? client)
    {
        var ssl = new SslClientAuthenticationOptions
        {
            // The gateway's certificate names its pool identity, not a host name: the pool CA is the only trust.
            RemoteCertificateValidationCallback = (_, certificate, _, _) => PoolPinning.ValidateServer(certificate, authority, poolId).Trusted,
        };
        if (client is not null) ssl.ClientCertificates = [client];
        return new SocketsHttpHandler { SslOptions = ssl, PooledConnectionLifetime = TimeSpan.FromMinutes(1) };
    }

    private static HttpRequestMessage Post(Uri url, string json) =>
        new(HttpMethod.Post, url) { Content = new StringContent(json, Encoding.UTF8, "application/json") };

    private static MemberCredential Issued(string body, System.Security.Cryptography.ECDsa key, PoolIdentity identity)
    {
        EnrollResponse response;
        try
        {
            response = EnrollResponse.Parse(body);
        }
        catch (FormatException e)
        {
            throw new PoolJoinException($"the gateway's answer is not a certificate: {e.Message}", e);
        }
        MemberCredential credential;
        try
        {
            credential = MemberCredential.FromIssued(response.Certificate, response.Ca, key);
        }
        catch (PoolSecurityException e)
        {
            throw new PoolJoinException(e.Message, e);
        }
        if (credential.Identity != identity)
        {
            var got = credential.Identity;
            credential.Dispose();
            throw new PoolJoinException($"the gateway issued a certificate for {got}, not {identity}");
        }
        return credential;
    }

    private static async Task<string> SendAsync(HttpClient http, Func<HttpRequestMessage> request, Uri gateway, TimeSpan timeout, CancellationToken ct,
        string? notFound = null)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        using var message = request();
        try
        {
            using var response = await http.SendAsync(message, limit.Token);
            var body = await response.Content.ReadAsStringAsync(limit.Token);
            if (response.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden)
                throw new PoolRefusedException(ErrorMessage(body) ?? $"{message.RequestUri} refused this node with HTTP {(int)response.StatusCode}");
            if (response.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.MethodNotAllowed && notFound is not null)
                throw new PoolJoinException(notFound);
            if (!response.IsSuccessStatusCode)
                throw new PoolJoinException($"{message.RequestUri} answered HTTP {(int)response.StatusCode}: {ErrorMessage(body) ?? Trim(body)}");
            return body;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new PoolJoinException($"the gateway at {gateway} did not answer within {timeout.TotalSeconds:F0} s");
        }
        catch (HttpRequestException e) when (e.InnerException is System.Security.Authentication.AuthenticationException)
        {
            throw new PoolJoinException($"the gateway at {gateway} is not a member of this pool (its TLS certificate is not from the pool CA, or it refused this node's certificate)", e);
        }
        catch (HttpRequestException e)
        {
            throw new PoolJoinException($"cannot reach the gateway at {gateway}: {e.Message}", e);
        }
    }

    /// <summary>The message of an OpenAI-shaped error body, if it is one.</summary>
    private static string? ErrorMessage(string body)
    {
        try
        {
            using var json = System.Text.Json.JsonDocument.Parse(body);
            return json.RootElement.TryGetProperty("error", out var error) && error.TryGetProperty("message", out var text) ? text.GetString() : null;
        }
        catch (System.Text.Json.JsonException)
        {
            return null;
        }
    }

    /// <summary>
    /// The local address this machine uses to reach <paramref name="host"/> (what the rest of the pool should
    /// dial back); null when it cannot be told. A UDP "connect" only picks a route; it sends nothing.
    /// </summary>
    public static IPAddress? LocalAddressToward(string host)
    {
        try
        {
            var target = IPAddress.TryParse(host, out var ip)
                ? ip
                : Array.Find(Dns.GetHostAddresses(host), a => a.AddressFamily == AddressFamily.InterNetwork);
            if (target is null) return null;
            using var socket = new Socket(target.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
            socket.Connect(target, 9);
            return (socket.LocalEndPoint as IPEndPoint)?.Address;
        }
        catch (SocketException)
        {
            return null;
        }
    }

    private static string Trim(string body)
    {
        var line = body.ReplaceLineEndings(" ").Trim();
        return line.Length > 200 ? line[..200] + "…" : line;
    }
}
