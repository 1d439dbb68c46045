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
