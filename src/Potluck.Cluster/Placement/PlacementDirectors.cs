using Microsoft.Extensions.DependencyInjection;
using Orleans.Hosting;
using Orleans.Placement;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Runtime.Placement;
using Potluck.Cluster.Directory;

namespace Potluck.Cluster.Placement;

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

public sealed class GatewayPreferredPlacementDirector(ISiloMetadataCache metadata) : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var silos = context.GetCompatibleSilos(target);
        // The oldest gateway silo (lowest generation), so every silo placing this grain agrees.
        SiloAddress? chosen = null;
        foreach (var silo in silos)
        {
            if (metadata.GetSiloMetadata(silo).Metadata.TryGetValue(NodeMetadataKeys.Role, out var role) && role == "gateway" &&
                (chosen is null || silo.Generation < chosen.Generation || (silo.Generation == chosen.Generation && silo.ToString().CompareTo(chosen.ToString()) < 0)))
                chosen = silo;
        }
        if (chosen is not null) return Task.FromResult(chosen);
        return Task.FromResult(silos.Length == 1 ? silos[0] : silos[Random.Shared.Next(silos.Length)]);
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
        silo.AddPlacementDirector<GatewayPreferredPlacement, GatewayPreferredPlacementDirector>();
        silo.Services.AddOptions<PoolDirectoryOptions>();
        if (configurePool is not null) silo.Services.Configure(configurePool);
        return silo;
    }
}
