using Potluck.Gateway.Routing;

namespace Potluck.Gateway.Streaming;

/// <summary>No chain of healthy stages can serve the request right now (HTTP 503).</summary>
public sealed class PoolUnavailableException(string message, IReadOnlyList<LayerGap> missingLayers) : Exception(message)
{
    public IReadOnlyList<LayerGap> MissingLayers { get; } = missingLayers;
}

/// <summary>
/// Every stage that could serve the session is out of KV, and none freed room within the wait (HTTP 429: the pool is
/// at capacity; nothing failed).
/// </summary>
public sealed class PoolOutOfKvException(string message) : Exception(message);

/// <summary>The route failed and could not be replaced within the retry budget (HTTP 503).</summary>
public sealed class RouteFailedException(string message, Exception? inner = null) : Exception(message, inner);
