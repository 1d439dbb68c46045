using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Potluck.Cluster;

namespace Potluck.Node.Joining;

/// <summary>
/// This node's model file differs from the one every gateway in the pool serves: it must not take part
/// (its hidden states would be meaningless to them). The message is the one line an operator sees.
/// </summary>
public sealed class ModelMismatchException(string message) : Exception(message);

/// <summary>
/// Runs right after the silo joined and before the node reports its shard: reads the live gateway silos'
/// model ids from silo metadata and refuses to join (<see cref="ModelMismatchException"/>) when gateways
/// exist and none serves this node's model. With no gateway in the pool yet there is nothing to compare;
/// the gateway then flags a mismatched node itself when it arrives (state "model-mismatch" in /api/pool).
/// </summary>
public sealed class GatewayModelCheck(
    IClusterMembershipService membership,
    ISiloMetadataCache metadata,
    ILocalSiloDetails localSilo,
    NodeOptions options,
    string modelId,
    ILogger<GatewayModelCheck> log) : IHostedService
{
    /// <summary>Longest wait for the other silos' metadata to arrive after joining.</summary>
    public static readonly TimeSpan MetadataWait = TimeSpan.FromSeconds(10);

    /// <summary>Adds the check as a hosted service; call after UseOrleans and before the shard reporter, so it runs between them.</summary>
    public static void Register(IServiceCollection services, NodeOptions options, string modelId) =>
        services.AddHostedService(sp => new GatewayModelCheck(sp.GetRequiredService<IClusterMembershipService>(),
            sp.GetRequiredService<ISiloMetadataCache>(), sp.GetRequiredService<ILocalSiloDetails>(), options, modelId,
            sp.GetRequiredService<ILogger<GatewayModelCheck>>()));

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + MetadataWait;
        List<SiloAddress> unknown;
        while (true)
        {
            // Metadata is fetched from each silo as membership updates arrive, so a fresh joiner waits briefly.
            unknown = [];
            var gateways = new List<(string Id, string ModelId, string? ModelName)>();
            foreach (var (address, member) in membership.CurrentSnapshot.Members)
            {
                if (member.Status != SiloStatus.Active || address.Equals(localSilo.SiloAddress)) continue;
                var values = metadata.GetSiloMetadata(address).Metadata;
                if (values.Count == 0)
                {
                    unknown.Add(address);
                    continue;
                }
                if (values.TryGetValue(NodeMetadataKeys.Role, out var role) && role == "gateway" && values.TryGetValue(NodeMetadataKeys.ModelId, out var id))
                {
                    gateways.Add((values.TryGetValue(NodeMetadataKeys.NodeId, out var gatewayId) ? gatewayId : address.ToString(), id,
                        values.TryGetValue(NodeMetadataKeys.ModelName, out var name) ? name : null));
                }
            }
            if (unknown.Count == 0 || DateTime.UtcNow >= deadline)
            {
                Judge(gateways, unknown);
                return;
            }
            await Task.Delay(100, cancellationToken);
        }
    }

    private void Judge(List<(string Id, string ModelId, string? ModelName)> gateways, List<SiloAddress> unknown)
    {
        if (unknown.Count > 0)
            log.LogWarning("Could not read the silo metadata of {Count} pool members within {Seconds:F0} s ({Silos}); their model is not checked",
                unknown.Count, MetadataWait.TotalSeconds, string.Join(", ", unknown));
        if (gateways.Count == 0)
        {
            log.LogInformation("No gateway in the pool yet; the model id {ModelId} is checked by the gateway when it joins", modelId);
            return;
        }
        foreach (var gateway in gateways)
        {
            if (gateway.ModelId == modelId)
            {
                log.LogInformation("Model check passed: gateway {GatewayId} serves model {ModelId}", gateway.Id, modelId);
                return;
            }
        }
        var served = string.Join(", ", gateways.Select(g => Describe(g.ModelId, g.ModelName)).Distinct());
        throw new ModelMismatchException(MismatchMessage(options.ResolvedNodeId, modelId, options.ModelPath, served));
    }

    /// <summary>The one line both the URL join and this check print when the files differ.</summary>
    public static string MismatchMessage(string nodeId, string localModelId, string modelPath, string served) =>
        $"{(nodeId.Length == 0 ? "this node" : "node " + nodeId)} holds model {localModelId} from {modelPath} but the pool's gateway serves {served}; refusing to join";

    public static string Describe(string modelId, string? modelName) => string.IsNullOrEmpty(modelName) ? modelId : $"{modelId} ({modelName})";

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
