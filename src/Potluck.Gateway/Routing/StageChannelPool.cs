using System.Collections.Concurrent;
using Grpc.Net.Client;

namespace Potluck.Gateway.Routing;

/// <summary>One gRPC channel per stage endpoint, shared by every session the gateway routes through it.</summary>
public sealed class StageChannelPool : IDisposable
{
    // Hidden states of a full prefill chunk can be several MiB.
    private const int MaxMessageBytes = 256 * 1024 * 1024;
    private readonly ConcurrentDictionary<string, GrpcChannel> _channels = new(StringComparer.Ordinal);

    public GrpcChannel Get(string endpoint) => _channels.GetOrAdd(endpoint, static e => GrpcChannel.ForAddress(e, new GrpcChannelOptions
    {
        MaxSendMessageSize = MaxMessageBytes,
        MaxReceiveMessageSize = MaxMessageBytes,
        HttpHandler = new SocketsHttpHandler
        {
            // Many concurrent Hop streams to one node would otherwise queue on one connection's stream limit.
            EnableMultipleHttp2Connections = true,
            KeepAlivePingDelay = TimeSpan.FromSeconds(20),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
            ConnectTimeout = TimeSpan.FromSeconds(5),
            PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
        },
    }));

    public void Dispose()
    {
        foreach (var channel in _channels.Values) channel.Dispose();
        _channels.Clear();
    }
}
