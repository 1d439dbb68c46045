using Potluck.Gateway.Streaming;
using Potluck.Gateway.Routing;

namespace Potluck.Gateway.Tests;

public sealed class RoutePlannerTests
{
    private static StageCandidate Stage(string id, int start, int end, double ms = 5, double hop = 0.5, int sessions = 0, long freeKv = 4096,
        bool healthy = true) =>
        new(id, $"http://127.0.0.1:1/{id}", start, end, healthy, healthy ? null : "silo is Dead", sessions, freeKv, 4096, ms, hop, 0);

    private static PoolSnapshot Pool(params StageCandidate[] stages) => new("m", 8, stages, DateTime.UtcNow);

    private static string Ids(RoutePlan plan) => string.Join(",", plan.Hops.Select(h => h.NodeId));

    [Fact]
    public void PicksTheCheapestChainAmongReplicas()
    {
        // Two ways through: a+b (5+5 ms) or one fat node c (14 ms); b has a slow replica b2.
        var pool = Pool(Stage("a", 0, 4), Stage("b", 4, 8), Stage("b2", 4, 8, ms: 9), Stage("c", 0, 8, ms: 14));
        var plan = RoutePlanner.Plan(pool, 100, null, out var failure)!;
        Assert.Null(failure);
        Assert.Equal("a,b", Ids(plan));
        // Hops measured at 0.5 ms are charged RoutePlanner.MinHopMs.
        Assert.Equal(5 + RoutePlanner.MinHopMs + 5 + RoutePlanner.MinHopMs, plan.EstimatedMsPerToken, 6);
    }

    [Fact]
    public void LoadAndHopLatencyShiftTheChoice()
    {
        // b is busy (4 sessions → 2× its step time) and b2 is close by: b2 wins.
        var busy = Pool(Stage("a", 0, 4), Stage("b", 4, 8, sessions: 4), Stage("b2", 4, 8, ms: 6));
        Assert.Equal("a,b2", Ids(RoutePlanner.Plan(busy, 10, null, out _)!));
        // A far-away hop (40 ms) makes the single fat node cheaper than two hops.
        var far = Pool(Stage("a", 0, 4), Stage("b", 4, 8, hop: 40), Stage("c", 0, 8, ms: 14));
        Assert.Equal("c", Ids(RoutePlanner.Plan(far, 10, null, out _)!));
    }

    [Fact]
    public void SkipsStagesWithoutKvRoomOrHealthAndAvoidedNodes()
    {
        var pool = Pool(Stage("a", 0, 4), Stage("b", 4, 8, freeKv: 50), Stage("b2", 4, 8, ms: 20), Stage("b3", 4, 8, ms: 1, healthy: false));
        Assert.Equal("a,b2", Ids(RoutePlanner.Plan(pool, 100, null, out _)!));
        Assert.Equal("a,b", Ids(RoutePlanner.Plan(pool, 40, null, out _)!));
        Assert.Null(RoutePlanner.Plan(pool, 100, new HashSet<string> { "b2" }, out var failure));
        Assert.Contains("no chain of nodes has room for 100", failure!.Message);
        Assert.Contains("b2", failure.Message);
        Assert.Empty(failure.MissingLayers);
    }

    [Fact]
    public void NamesTheMissingLayers()
    {
        var pool = Pool(Stage("a", 0, 3), Stage("c", 5, 7), Stage("dead", 3, 8, healthy: false));
        Assert.Null(RoutePlanner.Plan(pool, 1, null, out var failure));
        Assert.Equal([new LayerGap(3, 5), new LayerGap(7, 8)], failure!.MissingLayers);
        Assert.Contains("layers [3, 5), [7, 8) ", failure.Message);
        // The hint names exactly the gaps, in the form --layers takes.
        Assert.Contains("start a node with --layers 3:5 and another with --layers 7:8 ", failure.Message);
        Assert.Equal([new LayerGap(0, 8)], RoutePlanner.MissingLayers(Pool()));
    }

    [Fact]
    public void ExplainsSpansThatCoverEverythingButDoNotChain()
    {
        var pool = Pool(Stage("a", 0, 4), Stage("b", 2, 8));
        Assert.Null(RoutePlanner.Plan(pool, 1, null, out var failure));
        Assert.Contains("do not chain", failure!.Message);
        Assert.Contains("layer 4", failure.Message);
    }

    [Fact]
    public void StopMatcherHoldsBackPartialStopsAndCutsAtTheFirstMatch()
    {
        var matcher = new StopSequenceMatcher(["END", "\n\n"]);
        Assert.Equal("ab", matcher.Add("ab"));
        Assert.Equal("c", matcher.Add("cE")); // "E" could start "END"
        Assert.Equal("EX", matcher.Add("X"));
        Assert.Equal("y", matcher.Add("y\n"));
        Assert.Equal("", matcher.Add("\n tail"));
        Assert.Equal(6, matcher.StopOffset); // "abcEXy" then "\n\n"
        Assert.Equal("", matcher.Add("more"));

        var none = new StopSequenceMatcher([]);
        Assert.Equal("x", none.Add("x"));
        var flush = new StopSequenceMatcher(["STOP"]);
        Assert.Equal("a", flush.Add("aST"));
        Assert.Equal("ST", flush.Flush());
        Assert.Null(flush.StopOffset);
    }
}
