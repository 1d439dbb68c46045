using System.Net;
using System.Net.Sockets;
using Potluck.Cluster.Joining;

namespace Potluck.Node.Joining;

/// <summary>The gateway could not be asked, or did not answer like a Potluck gateway; the message says which.</summary>
public sealed class PoolJoinException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Fetches a pool's join document (GET /api/join) from its gateway's URL, with a bounded wait.</summary>
public static class PoolJoinClient
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    /// <summary>True when <paramref name="join"/> names a gateway URL (http:// or https://) rather than a seed silo HOST:PORT.</summary>
    public static bool IsGatewayUrl(string join) =>
        join.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || join.StartsWith("https://", StringComparison.OrdinalIgnoreCase);

    public static async Task<PoolJoinInfo> FetchAsync(Uri gateway, TimeSpan timeout, CancellationToken ct)
    {
        var url = new Uri(gateway, PoolJoinInfo.Path);
        using var http = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        string body;
        try
        {
            using var response = await http.GetAsync(url, limit.Token);
            body = await response.Content.ReadAsStringAsync(limit.Token);
            if (response.StatusCode == HttpStatusCode.NotFound)
                throw new PoolJoinException($"{gateway} does not serve {PoolJoinInfo.Path}: is it a Potluck gateway (of this version)?");
            if (!response.IsSuccessStatusCode)
                throw new PoolJoinException($"{url} answered HTTP {(int)response.StatusCode}: {Trim(body)}");
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new PoolJoinException($"the gateway at {gateway} did not answer within {timeout.TotalSeconds:F0} s");
        }
        catch (HttpRequestException e)
        {
            throw new PoolJoinException($"cannot reach the gateway at {gateway}: {e.Message}", e);
        }
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
    /// Tells the gateway this node is about to load a span (POST /api/join/announce), so /api/pool shows it as joining
    /// and nodes choosing meanwhile count the span as taken.
    /// </summary>
    /// <exception cref="PoolJoinException">Unreachable, refused (the message carries the gateway's error), or an older gateway.</exception>
    public static async Task<JoinAnnouncementAccepted> AnnounceAsync(Uri gateway, JoinAnnouncement announcement, TimeSpan timeout, CancellationToken ct)
    {
        var url = new Uri(gateway, JoinAnnouncement.Path);
        using var http = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        try
        {
            using var content = new StringContent(announcement.ToJson(), System.Text.Encoding.UTF8, "application/json");
            using var response = await http.PostAsync(url, content, limit.Token);
            var body = await response.Content.ReadAsStringAsync(limit.Token);
            if (response.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.MethodNotAllowed)
                throw new PoolJoinException($"{gateway} does not take announcements at {JoinAnnouncement.Path} (an older gateway)");
            if (!response.IsSuccessStatusCode)
                throw new PoolJoinException($"{url} refused the announcement with HTTP {(int)response.StatusCode}: {Trim(body)}");
            return JoinAnnouncementAccepted.Parse(body);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new PoolJoinException($"the gateway at {gateway} did not take the announcement within {timeout.TotalSeconds:F0} s");
        }
        catch (HttpRequestException e)
        {
            throw new PoolJoinException($"cannot reach the gateway at {gateway}: {e.Message}", e);
        }
        catch (FormatException e)
        {
            throw new PoolJoinException($"{url} did not answer like a Potluck gateway: {e.Message}", e);
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
