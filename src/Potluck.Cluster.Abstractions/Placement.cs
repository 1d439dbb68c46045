using Orleans.Placement;

namespace Potluck.Cluster;

/// <summary>
/// Places a grain on the silo whose metadata names the node in the grain key's prefix
/// ("node-7/0-8" → node-7). Weights and KV live in that node's process, so its grains must too.
/// </summary>
[GenerateSerializer, Immutable, Alias("potluck.NodePinnedPlacement")]
public sealed class NodePinnedPlacement : PlacementStrategy
{
    public static NodePinnedPlacement Instance { get; } = new();
}

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class NodePinnedPlacementAttribute() : PlacementAttribute(NodePinnedPlacement.Instance);

/// <summary>The node named in a pinned grain key has no live silo: re-route.</summary>
[GenerateSerializer, Alias("potluck.NodeUnavailableException")]
public sealed class NodeUnavailableException : Exception
{
    public NodeUnavailableException(string nodeId) : base($"node '{nodeId}' has no live silo in the cluster") => NodeId = nodeId;

    [Id(0)]
    public string NodeId { get; init; } = "";
}

/// <summary>
/// Places a grain on a gateway silo when the cluster has one, else on any silo. For pool-wide soft state (the pool
/// directory): nodes come and go without warning, and an activation that dies with a node loses its state until
/// every node has reported again, a window in which the pool looks emptier than it is.
/// </summary>
[GenerateSerializer, Immutable, Alias("potluck.GatewayPreferredPlacement")]
public sealed class GatewayPreferredPlacement : PlacementStrategy
{
    public static GatewayPreferredPlacement Instance { get; } = new();
}

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class GatewayPreferredPlacementAttribute() : PlacementAttribute(GatewayPreferredPlacement.Instance);
