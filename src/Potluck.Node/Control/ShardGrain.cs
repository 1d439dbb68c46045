using Orleans.Placement;
using Potluck.Cluster;
using Potluck.Node.Compute;

namespace Potluck.Node.Control;

/// <summary>
/// Control-plane face of the span this node holds. Pinned to this node's silo by its key, so it reads
/// and changes the process-local <see cref="SpanHost"/> directly; weights and KV are never grain state.
/// </summary>
[NodePinnedPlacement]
[Immovable]
[KeepAlive]
internal sealed class ShardGrain(SpanHost host, ShardStatusSource status) : Grain, IShardGrain
{
    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        var key = this.GetPrimaryKeyString();
        var expected = ShardKeys.For(host.NodeId, host.LayerStart, host.LayerEnd);
        if (key != expected)
            throw new InvalidOperationException($"node {host.NodeId} holds shard {expected}, not {key}");
        return Task.CompletedTask;
    }

    public Task<ShardStatus> GetStatus() => Task.FromResult(status.Current());

    public Task<SessionReservation> ReserveSession(string sessionId, int maxTokens)
    {
        if (string.IsNullOrEmpty(sessionId) || sessionId.Length > 200) throw new ArgumentException("session id must be 1-200 characters", nameof(sessionId));
        if (maxTokens <= 0 || maxTokens > host.ContextLength) throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, $"must be in [1, {host.ContextLength}]");
        host.Open(sessionId, maxTokens);
        return Task.FromResult(new SessionReservation(sessionId, host.NodeId, host.LayerStart, host.LayerEnd, host.FreeKvTokens));
    }

    public Task<bool> CloseSession(string sessionId, bool cancelled) => Task.FromResult(host.Close(sessionId, cancelled));
}
