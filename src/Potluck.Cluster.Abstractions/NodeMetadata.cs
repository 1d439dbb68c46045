namespace Potluck.Cluster;

/// <summary>
/// Silo metadata keys a node advertises (fixed for the silo's lifetime; changing state goes through
/// <see cref="IPoolDirectoryGrain"/>).
/// </summary>
public static class NodeMetadataKeys
{
    public const string NodeId = "potluck.node-id";
    public const string ModelId = "potluck.model-id";
    public const string Layers = "potluck.layers";
    public const string GrpcEndpoint = "potluck.grpc";
    public const string KvBudgetTokens = "potluck.kv-budget-tokens";
    public const string MsPerToken = "potluck.ms-per-token";
    public const string Role = "potluck.role";

    /// <summary>The served model's name (gateways set it, so a node refusing a mismatched pool can name it).</summary>
    public const string ModelName = "potluck.model-name";

    /// <summary>The silo's OS process id (shown by the gateway's /api/pool; tells local pool processes apart).</summary>
    public const string ProcessId = "potluck.process-id";
}
