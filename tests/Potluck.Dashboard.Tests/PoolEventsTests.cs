using Potluck.Gateway.Routing;
using Potluck.Gateway.Telemetry;

namespace Potluck.Dashboard.Tests;

/// <summary>Pool events from successive pool views, and the departed stages the dashboard keeps showing.</summary>
public sealed class PoolEventsTests
{
    private static readonly DateTime T0 = new(2026, 1, 1, 12, 0, 0, DateTimeKind.Utc);

    private static StageCandidate Stage(string node, int start, int end, bool healthy = true, string? problem = null) =>
        new(node, $"https://127.0.0.1:{7000 + node.Length}", start, end, healthy, problem, 0, 100, 100, 5, 0.2, 0);

    private static string Silo(string node) => $"S127.0.0.1:{11000 + node[^1]}:1";

    private static void Observe(PoolEvents events, DateTime time, IReadOnlyDictionary<string, SiloStatus> members, params StageCandidate[] stages) =>
        events.Observe(stages, stages.ToDictionary(s => s.ShardKey, s => Silo(s.NodeId)), members, time);

    private static Dictionary<string, SiloStatus> Members(params (string Node, SiloStatus Status)[] members) =>
        members.ToDictionary(m => Silo(m.Node), m => m.Status);

    [Fact]
    public void Joins_failures_recoveries_and_a_kill_are_events_and_a_killed_stage_stays_listed_as_failed()
    {
        var events = new PoolEvents();
        var all = Members(("a", SiloStatus.Active), ("b", SiloStatus.Active), ("c", SiloStatus.Active));
        Observe(events, T0, all, Stage("a", 0, 2), Stage("b", 2, 4), Stage("c", 2, 4));
        Assert.Equal(["joined", "joined", "joined"], events.Events.Select(e => e.Kind));

        // b stops reporting: failed; then it reports again: recovered.
        Observe(events, T0.AddSeconds(1), all, Stage("a", 0, 2), Stage("b", 2, 4, false, "no report for 16.0 s"), Stage("c", 2, 4));
        Assert.Equal(("failed", "b", "no report for 16.0 s"), (events.Events[0].Kind, events.Events[0].NodeId, events.Events[0].Detail));
        Observe(events, T0.AddSeconds(2), all, Stage("a", 0, 2), Stage("b", 2, 4), Stage("c", 2, 4));
        Assert.Equal(("recovered", "b"), (events.Events[0].Kind, events.Events[0].NodeId));

        // c is SIGKILLed while healthy: its silo is declared dead and the directory drops its shard.
        Observe(events, T0.AddSeconds(3), Members(("a", SiloStatus.Active), ("b", SiloStatus.Active), ("c", SiloStatus.Dead)),
            Stage("a", 0, 2), Stage("b", 2, 4));
        Assert.Equal(("failed", "c", 2, 4), (events.Events[0].Kind, events.Events[0].NodeId, events.Events[0].LayerStart, events.Events[0].LayerEnd));
        var departed = Assert.Single(events.Departed);
        Assert.Equal(("c", "failed"), (departed.NodeId, departed.State));

        // c comes back: joined again and no longer departed.
        Observe(events, T0.AddSeconds(4), all, Stage("a", 0, 2), Stage("b", 2, 4), Stage("c", 2, 4));
        Assert.Equal(("joined", "c"), (events.Events[0].Kind, events.Events[0].NodeId));
        Assert.Empty(events.Departed);
    }

    [Fact]
    public void A_drained_or_withdrawn_stage_left_and_one_that_failed_first_is_removed()
    {
        var events = new PoolEvents();
        var all = Members(("a", SiloStatus.Active), ("b", SiloStatus.Active), ("c", SiloStatus.Active));
        Observe(events, T0, all, Stage("a", 0, 2), Stage("b", 2, 4), Stage("c", 2, 4));

        // b drains (SIGTERM), then withdraws and its silo stops.
        Observe(events, T0.AddSeconds(1), all, Stage("a", 0, 2), Stage("b", 2, 4, false, "draining"), Stage("c", 2, 4));
        Assert.Equal("draining", events.Events[0].Kind);
        Observe(events, T0.AddSeconds(2), Members(("a", SiloStatus.Active), ("b", SiloStatus.Dead), ("c", SiloStatus.Active)), Stage("a", 0, 2), Stage("c", 2, 4));
        Assert.Equal(("drained", "b"), (events.Events[0].Kind, events.Events[0].NodeId));
        Assert.Equal("left", Assert.Single(events.Departed).State);

        // c goes stale first (failed), then its dead silo's shard is dropped (removed); it stays listed as failed.
        Observe(events, T0.AddSeconds(3), all, Stage("a", 0, 2), Stage("c", 2, 4, false, "no report for 15.5 s"));
        Observe(events, T0.AddSeconds(4), Members(("a", SiloStatus.Active), ("c", SiloStatus.Dead)), Stage("a", 0, 2));
        Assert.Equal(["removed", "failed"], events.Events.Take(2).Select(e => e.Kind));
        Assert.Equal("failed", events.Departed.Single(d => d.NodeId == "c").State);

        // Departed stages are forgotten after KeepDeparted.
        Observe(events, T0.AddSeconds(4) + PoolEvents.KeepDeparted + TimeSpan.FromSeconds(1), Members(("a", SiloStatus.Active)), Stage("a", 0, 2));
        Assert.Empty(events.Departed);
    }

    [Fact]
    public void A_stage_whose_silo_stays_active_withdrew_and_a_node_with_a_new_span_moved()
    {
        var events = new PoolEvents();
        var all = Members(("a", SiloStatus.Active), ("b", SiloStatus.Active));
        Observe(events, T0, all, Stage("a", 0, 2), Stage("b", 2, 4));
        Observe(events, T0.AddSeconds(1), all, Stage("a", 0, 2), Stage("b", 0, 2));
        Assert.Equal(["joined", "moved"], events.Events.Take(2).Select(e => e.Kind).Order());
        Assert.Equal("now holds [0, 2)", events.Events.Single(e => e.Kind == "moved").Detail);
        Assert.Empty(events.Departed);

        Observe(events, T0.AddSeconds(2), all, Stage("a", 0, 2));
        Assert.Equal(("left", "b"), (events.Events[0].Kind, events.Events[0].NodeId));
        Assert.Equal("left", Assert.Single(events.Departed).State);
    }
}
