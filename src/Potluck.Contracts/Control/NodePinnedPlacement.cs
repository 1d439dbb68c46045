using Microsoft.Extensions.DependencyInjection;
using Orleans.Hosting;
using Orleans.Placement;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Runtime.Placement;

namespace Potluck.Contracts.Control;

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

/// <summary>Runs on whichever silo places the activation; every silo must register it.</summary>
public sealed class NodePinnedPlacementDirector(ISiloMetadataCache metadata) : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var nodeId = ShardKeys.NodeIdOf(target.GrainIdentity.Key.ToString()!);
        foreach (var silo in context.GetCompatibleSilos(target))
        {
            if (metadata.GetSiloMetadata(silo).Metadata.TryGetValue(NodeMetadataKeys.NodeId, out var id) && id == nodeId)
                return Task.FromResult(silo);
        }
        // Failing fast is the re-route signal; a random silo would hold no weights.
        throw new NodeUnavailableException(nodeId);
    }
}

public static class ControlPlaneSiloExtensions
{
    /// <summary>
    /// What every Potluck silo (node or gateway) needs: its metadata, the node-pinned placement director
    /// and the pool directory's options.
    /// </summary>
    public static ISiloBuilder AddPotluckControlPlane(this ISiloBuilder silo, Dictionary<string, string> metadata,
        Action<PoolDirectoryOptions>? configurePool = null)
    {
        silo.UseSiloMetadata(metadata);
        silo.AddPlacementDirector<NodePinnedPlacement, NodePinnedPlacementDirector>();
        silo.Services.AddOptions<PoolDirectoryOptions>();
        if (configurePool is not null) silo.Services.Configure(configurePool);
        return silo;
    }
}
