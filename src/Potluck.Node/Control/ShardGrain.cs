using Orleans.Concurrency;
using Orleans.Placement;
using Potluck.Cluster;
using Potluck.Node.Compute;

namespace Potluck.Node.Control;

/// <summary>
/// Control-plane face of the span this node holds. Pinned to this node's silo by its key, so it reads
/// and changes the process-local <see cref="SpanHost"/> directly; weights and KV are never grain state.
/// </summary>
/// <remarks>
/// Reentrant, and opens and closes off the grain's turn: those wait for the compute thread, and a long forward would
/// otherwise hold up <see cref="GetStatus"/> behind them (the grain has no state of its own; the host is thread-safe).
/// </remarks>
[NodePinnedPlacement]
[Immovable]
[KeepAlive]
[Reentrant]
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

    public async Task<SessionReservation> ReserveSession(string sessionId, int maxTokens)
    {
        if (string.IsNullOrEmpty(sessionId) || sessionId.Length > 200) throw new ArgumentException("session id must be 1-200 characters", nameof(sessionId));
        if (maxTokens <= 0 || maxTokens > host.ContextLength) throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, $"must be in [1, {host.ContextLength}]");
        await OffTurn(() => host.Open(sessionId, maxTokens));
        return new SessionReservation(sessionId, host.NodeId, host.LayerStart, host.LayerEnd, host.FreeKvTokens);
    }

    public Task<bool> CloseSession(string sessionId, bool cancelled) => OffTurn(() => host.Close(sessionId, cancelled));

    // Its own thread, not a pool thread: the wait can last a whole prefill, and a pool thread blocked that long starves
    // the pool on a small machine (the gRPC probe then stalls until the pool grows).
    private static Task<T> OffTurn<T>(Func<T> change) =>
        Task.Factory.StartNew(change, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
}
