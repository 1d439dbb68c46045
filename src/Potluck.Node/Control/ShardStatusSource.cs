using Potluck.Cluster;
using Potluck.Node.Compute;

namespace Potluck.Node.Control;

/// <summary>Builds this node's <see cref="ShardStatus"/> from the live span host.</summary>
public sealed class ShardStatusSource(SpanHost host, string grpcEndpoint, Func<string> siloAddress)
{
    private long _lastSteps;
    private long _lastTicks = Environment.TickCount64;
    private double _stepsPerSecond;
    private readonly Lock _gate = new();

    public string GrpcEndpoint { get; } = grpcEndpoint;

    public ShardStatus Current()
    {
        lock (_gate)
        {
            // Load = steps per second since the previous status (reports come every couple of seconds).
            // Every read here is lock-free on the host: a status never waits behind a running forward.
            var now = Environment.TickCount64;
            var steps = host.StepsCompleted;
            if (now - _lastTicks >= 500)
            {
                _stepsPerSecond = (steps - _lastSteps) * 1000.0 / (now - _lastTicks);
                _lastSteps = steps;
                _lastTicks = now;
            }
            var counters = host.Counters;
            return new ShardStatus(host.NodeId, host.ModelId, host.LayerStart, host.LayerEnd, host.LayerCount, host.Width,
                GrpcEndpoint, host.KvBudgetTokens, counters.FreeKvTokens, host.KvBytesPerToken, counters.OpenSessions,
                _stepsPerSecond, host.MeasuredMsPerToken, siloAddress(), DateTime.UtcNow, host.Draining);
        }
    }
}
