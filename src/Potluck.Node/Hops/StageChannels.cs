using System.Collections.Concurrent;
using Grpc.Net.Client;

namespace Potluck.Node.Hops;

/// <summary>
/// One GrpcChannel per downstream endpoint for the node's lifetime: every session hop to the same node
/// multiplexes over the same HTTP/2 connection(s), so a step never pays connection set-up.
/// </summary>
public sealed class StageChannels(int maxMessageBytes) : IDisposable
{
    private readonly ConcurrentDictionary<string, GrpcChannel> _channels = new(StringComparer.OrdinalIgnoreCase);

    public int MaxMessageBytes { get; } = maxMessageBytes;

    /// <summary>Only absolute http/https endpoints are dialled.</summary>
    public static bool IsValidEndpoint(string endpoint) =>
        Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps) &&
        string.IsNullOrEmpty(uri.PathAndQuery.Trim('/'));

    public GrpcChannel Get(string endpoint) => _channels.GetOrAdd(endpoint, static (e, max) => Create(e, max), MaxMessageBytes);

    public static GrpcChannel Create(string endpoint, int maxMessageBytes) => GrpcChannel.ForAddress(endpoint, new GrpcChannelOptions
    {
        MaxReceiveMessageSize = maxMessageBytes,
        MaxSendMessageSize = maxMessageBytes,
        HttpHandler = new SocketsHttpHandler
        {
            // Many concurrent session streams to one node: open more connections past the stream limit.
            EnableMultipleHttp2Connections = true,
            PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
            KeepAlivePingDelay = TimeSpan.FromSeconds(20),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
            KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests,
            ConnectTimeout = TimeSpan.FromSeconds(10),
        },
    });

    public void Dispose()
    {
        foreach (var channel in _channels.Values) channel.Dispose();
        _channels.Clear();
    }
}
