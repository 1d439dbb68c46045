using Potluck.Cluster.Joining;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;
using Potluck.Node.Joining;

namespace Potluck.Node.Tests;

/// <summary>How a node without --layers picks its span, and what it reads from the gateway's join document.</summary>
public sealed class SpanChooserTests
{
    private const int Layers = 12;

    private static JoinSpan Span(string node, int start, int end, bool healthy = true, double stepsPerSecond = 0, int sessions = 0, double msPerToken = 1) =>
        new(node, $"http://127.0.0.1:7{start:00}{end:00}", start, end, healthy, sessions, stepsPerSecond, 1000, 1000, msPerToken);

    /// <summary>Equal layers of 100 bytes; the budget says how many fit.</summary>
    private static NodeCapacity Room(int layers, int? maxLayers = null, int layerCount = Layers) =>
        new(Enumerable.Repeat(100L, layerCount).ToArray(), layers * 100L, maxLayers);

    private static (int, int) Pick(NodeCapacity capacity, params JoinSpan[] spans)
    {
        var choice = SpanChooser.Choose(capacity.LayerCount, spans, capacity);
        Assert.False(string.IsNullOrWhiteSpace(choice.Reason));
        return (choice.Start, choice.End);
    }

    [Fact]
    public void AnEmptyPoolGetsTheWholeModelOrItsFirstLayersThatFit()
    {
        Assert.Equal((0, 12), Pick(Room(100)));
        Assert.Equal((0, 5), Pick(Room(5)));
        Assert.Equal((0, 3), Pick(Room(100, maxLayers: 3)));
    }

    [Fact]
    public void TheRestAfterTheFirstNodeCompletesTheChain()
    {
        Assert.Equal((4, 12), Pick(Room(100), Span("a", 0, 4)));
        // Only the missing front fits exactly: take it rather than something longer.
        Assert.Equal((0, 4), Pick(Room(100), Span("a", 4, 12)));
    }

    [Fact]
    public void ALargerGapIsFilledFirstWhenNoSingleSpanCanCloseThePool()
    {
        // Holes [2,4) and [6,12): nothing of 4 layers closes both, so the larger hole is filled from its start.
        Assert.Equal((6, 10), Pick(Room(4), Span("a", 0, 2), Span("b", 4, 6)));
        // Room for the larger hole but not for [2,12): the larger hole goes first, the small one is for the next node.
        Assert.Equal((6, 12), Pick(Room(6), Span("a", 0, 2), Span("b", 4, 6)));
        // With room for everything from layer 2, one node closes the pool.
        Assert.Equal((2, 12), Pick(Room(10), Span("a", 0, 2), Span("b", 4, 6)));
    }

    [Fact]
    public void TheShortestSpanThatClosesThePoolWins()
    {
        // [0,3) then [3,9) reach layer 9: [9,12) closes the pool; [3,12) or [0,12) would too, with more layers.
        Assert.Equal((9, 12), Pick(Room(100), Span("a", 0, 3), Span("b", 3, 9)));
        // [0,4) and [8,12) held: [4,8) is the only closing span.
        Assert.Equal((4, 8), Pick(Room(100), Span("a", 0, 4), Span("b", 8, 12)));
    }

    [Fact]
    public void SpansThatOverlapButDoNotMeetAreJoinedUp()
    {
        // Every layer is held, but [0,6) and [4,12) do not meet end to start: no route exists.
        Assert.Equal((0, 4), Pick(Room(100), Span("a", 0, 6), Span("b", 4, 12)));
        // Not enough room to close it: extend the chain from its furthest boundary (6).
        Assert.Equal((6, 9), Pick(Room(3), Span("a", 0, 6), Span("b", 4, 12)));
    }

    [Fact]
    public void UnhealthySpansAndThisNodesOwnOldSpanDoNotCount()
    {
        Assert.Equal((4, 12), Pick(Room(100), Span("a", 0, 4), Span("b", 4, 12, healthy: false)));
        var capacity = Room(100);
        var choice = SpanChooser.Choose(Layers, [Span("a", 0, 4), Span("me", 4, 12)], capacity, ownNodeId: "me");
        Assert.Equal((4, 12), (choice.Start, choice.End));
    }

    [Fact]
    public void AFullPoolGetsTheWindowWhoseWeakestLayerHasTheLeastThroughput()
    {
        // 2 ms -> 500 tokens/s, 5 ms -> 200 tokens/s: [4,8) is the bottleneck.
        JoinSpan[] pool = [Span("a", 0, 4, msPerToken: 2), Span("b", 4, 8, msPerToken: 5), Span("c", 8, 12, msPerToken: 2)];
        Assert.Equal((4, 8), Pick(Room(100), pool));
        var choice = SpanChooser.Choose(Layers, pool, Room(100));
        Assert.Contains("200.0 tokens/s", choice.Reason);
        Assert.Contains("weakest layer 4", choice.Reason);
        // Room for 8 layers: [0,8) and [4,12) contain the same weakest layer but a larger sum; the shortest window wins.
        Assert.Equal((4, 8), Pick(Room(8), pool));
        // A second, equally slow [4,8) replica lifts it to 400, still the weakest; a fast one (2.5 ms) lifts it to 600,
        // and then [0,4) and [8,12) tie at 500 (same sum, same length): the earlier wins.
        Assert.Equal((4, 8), Pick(Room(100), [.. pool, Span("d", 4, 8, msPerToken: 5)]));
        Assert.Equal((0, 4), Pick(Room(100), [.. pool, Span("d", 4, 8, msPerToken: 2.5)]));
        // Load no longer decides, throughput does: the busy but fast [0,4) (1000 tokens/s) is not replicated;
        // layers 8-11 (250 + 200) are weaker than 4-7 (250 + 250).
        Assert.Equal((8, 12), Pick(Room(100), Span("a", 0, 4, stepsPerSecond: 90, msPerToken: 1), Span("b", 4, 12, msPerToken: 4),
            Span("c", 4, 8, msPerToken: 4), Span("d", 8, 12, msPerToken: 5)));
    }

    [Fact]
    public void ReplicaWindowsMustLineUpWithThePoolsBoundaries()
    {
        // Layers 0-5 are held twice, 6-11 once, each span at 1 ms: [6,12) is the weakest and fits in 6 layers.
        JoinSpan[] pool = [Span("a", 0, 6), Span("b", 6, 12), Span("c", 0, 3), Span("d", 3, 6)];
        Assert.Equal((6, 12), Pick(Room(6), pool));
        // With room for 3 layers only, [6,9) would not meet any boundary at 9: only [0,3) and [3,6) chain.
        Assert.Equal((0, 3), Pick(Room(3), pool));
        var tooWide = Assert.Throws<SpanChoiceException>(() => Pick(Room(2), pool));
        Assert.Contains("--layers", tooWide.Message);
    }

    [Fact]
    public void SpansWithoutAMeasurementCountAtThisNodesProbedSpeed()
    {
        // [0,4) reports no speed (0). At 0.5 ms per layer it is assumed at 500 tokens/s, faster than the others' 250.
        JoinSpan[] pool = [Span("a", 0, 4, msPerToken: 0), Span("b", 4, 8, msPerToken: 4), Span("c", 8, 12, msPerToken: 4)];
        var fast = SpanChooser.Choose(Layers, pool, Room(4), ownMsPerLayer: 0.5);
        Assert.Equal((4, 8), (fast.Start, fast.End));
        // At 2 ms per layer it is assumed at 125 tokens/s: the weakest.
        var slow = SpanChooser.Choose(Layers, pool, Room(4), ownMsPerLayer: 2);
        Assert.Equal((0, 4), (slow.Start, slow.End));
        Assert.Contains("this node adds about 125.0 tokens/s", slow.Reason);
        // Without a probe: the median of the measured spans (1 ms per layer here, so 250 tokens/s): a tie, the earlier wins.
        Assert.Equal(1.0, SpanChooser.AssumedMsPerLayer(pool, null), 6);
        Assert.Equal(SpanChooser.FallbackMsPerLayer, SpanChooser.AssumedMsPerLayer([Span("a", 0, 4, msPerToken: 0)], null));
        Assert.Equal((0, 4), Pick(Room(4), pool));
    }

    [Fact]
    public void ANodeThatAnnouncedItIsJoiningCountsAsHoldingItsSpan()
    {
        JoinSpan joining = new("j", "http://127.0.0.1:7200", 4, 8, Healthy: false, 0, 0, 0, 0, 0, Joining: true);
        // Without the announcement [4,12) would complete the pool; with it, only [8,12) is left.
        Assert.Equal((4, 12), Pick(Room(100), Span("a", 0, 4)));
        Assert.Equal((8, 12), Pick(Room(100), Span("a", 0, 4), joining));
        // An unhealthy span that is not joining still does not count.
        Assert.Equal((4, 12), Pick(Room(100), Span("a", 0, 4), joining with { Joining = false }));
    }

    [Fact]
    public void AReplicaMustFitAndASpanNobodyCanHoldIsAClearRefusal()
    {
        // [0,8) is weaker but does not fit in 5 layers; [8,12) does.
        Assert.Equal((8, 12), Pick(Room(5), Span("a", 0, 8, msPerToken: 10), Span("b", 8, 12, msPerToken: 1)));
        var tooWide = Assert.Throws<SpanChoiceException>(() => Pick(Room(3), Span("a", 0, 6), Span("b", 6, 12)));
        Assert.Contains("--layers", tooWide.Message);
        var nothing = Assert.Throws<SpanChoiceException>(() => Pick(new NodeCapacity(Enumerable.Repeat(100L, Layers).ToArray(), 99)));
        Assert.Contains("--memory", nothing.Message);
    }

    [Fact]
    public void ARebalancingNodeStaysWhileItIsTheOnlyHolderOfItsLayers()
    {
        var stay = RebalancePlanner.Consider(8, [Span("a", 0, 2), Span("me", 2, 6)], "me", Room(4, layerCount: 8), 0.1);
        Assert.Null(stay.MoveTo);
        Assert.Contains("no other serving span", stay.Reason);
        // A replica that is still joining does not count as holding the layers yet.
        JoinSpan joining = new("b", "http://127.0.0.1:7200", 2, 6, Healthy: false, 0, 0, 0, 0, 0, Joining: true);
        Assert.Null(RebalancePlanner.Consider(8, [Span("a", 0, 2), Span("me", 2, 6), joining], "me", Room(4, layerCount: 8), 0.1).MoveTo);
        // Not serving yet: nothing to decide.
        Assert.Null(RebalancePlanner.Consider(8, [Span("a", 0, 2)], "me", Room(4, layerCount: 8), 0.1).MoveTo);
    }

    [Fact]
    public void AReplicatedNodeMovesToLayersNobodyHolds()
    {
        // [2,6) is held twice, [6,8) by nobody: the replica moves there.
        var move = RebalancePlanner.Consider(8, [Span("a", 0, 2), Span("b", 2, 6), Span("me", 2, 6)], "me", Room(4, layerCount: 8), 0.1);
        Assert.Equal((6, 8), (move.MoveTo!.Start, move.MoveTo.End));
        // Spans that line up count as a replica too: [2,4) + [4,6) hold what "me" holds.
        var lined = RebalancePlanner.Consider(8, [Span("a", 0, 2), Span("b", 2, 4), Span("c", 4, 6), Span("me", 2, 6)], "me", Room(4, layerCount: 8), 0.1);
        Assert.Equal((6, 8), (lined.MoveTo!.Start, lined.MoveTo.End));
    }

    [Fact]
    public void AFullPoolRebalancesOnlyForAClearGainOfItsWeakestLayer()
    {
        // Three nodes on [0,4), one on [4,8), all 4 ms: the weakest layer goes from 250 to 500 tokens/s by moving.
        var move = RebalancePlanner.Consider(8, [Span("a", 0, 4, msPerToken: 4), Span("c", 0, 4, msPerToken: 4), Span("me", 0, 4, msPerToken: 4),
            Span("b", 4, 8, msPerToken: 4)], "me", Room(4, layerCount: 8), 1.0);
        Assert.Equal((4, 8), (move.MoveTo!.Start, move.MoveTo.End));
        Assert.Contains("from 250.0 to 500.0 tokens/s", move.Reason);
        // Two on [0,4) (250 each), one 5 ms node on [4,8) (200): moving gives min(250, 450) = 250, only 1.25x: stay.
        var stay = RebalancePlanner.Consider(8, [Span("a", 0, 4, msPerToken: 4), Span("me", 0, 4, msPerToken: 4), Span("b", 4, 8, msPerToken: 5)],
            "me", Room(4, layerCount: 8), 1.0);
        Assert.Null(stay.MoveTo);
        Assert.Contains("only from 200.0 to 250.0", stay.Reason);
        // A balanced pool: the best place is where it already is.
        var balanced = RebalancePlanner.Consider(8, [Span("a", 0, 4, msPerToken: 4), Span("me", 0, 4, msPerToken: 4), Span("b", 4, 8, msPerToken: 4),
            Span("d", 4, 8, msPerToken: 4)], "me", Room(4, layerCount: 8), 1.0);
        Assert.Null(balanced.MoveTo);
        // Its start-up measurement came out 16 ms on a busy machine, the speed probe 1 ms per layer: the faster one
        // counts, so moving still lifts [4,8) from 250 to 500 tokens/s (with 16 ms it would be 250 to 312.5, under 4/3).
        var slowStart = RebalancePlanner.Consider(8, [Span("a", 0, 4, msPerToken: 4), Span("c", 0, 4, msPerToken: 4), Span("me", 0, 4, msPerToken: 16),
            Span("b", 4, 8, msPerToken: 4)], "me", Room(4, layerCount: 8), 1.0);
        Assert.Equal((4, 8), (slowStart.MoveTo!.Start, slowStart.MoveTo.End));
        Assert.Contains("from 250.0 to 500.0 tokens/s", slowStart.Reason);
    }

    [Fact]
    public void TheSpeedProbeMeasuresOneBlockOnceAndThenReusesItPerModelAndMachine()
    {
        NativeRuntime.EnsureLoaded();
        var info = GgufModel.Inspect(TestModels.Small(GgmlType.Q8_0));
        var cache = Directory.CreateTempSubdirectory("potluck-probe-test-").FullName;
        try
        {
            var first = SpeedProbe.MeasureOrReuse(info.Path, info.ModelId, 1, cache);
            Assert.False(first.FromCache);
            Assert.True(first.MsPerLayer is > 0 and < 1000, $"{first.MsPerLayer} ms");
            var file = Path.Combine(cache, SpeedProbe.CacheFileName);
            var json = File.ReadAllText(file);
            Assert.Contains(info.ModelId, json);
            Assert.Contains(SpeedProbe.CpuModelName(), json);

            var again = SpeedProbe.MeasureOrReuse(info.Path, info.ModelId, 1, cache);
            Assert.True(again.FromCache);
            Assert.Equal(first.MsPerLayer, again.MsPerLayer, 3);

            // Another thread count is another machine configuration: measured, and both kept.
            var twoThreads = SpeedProbe.MeasureOrReuse(info.Path, info.ModelId, 2, cache);
            Assert.False(twoThreads.FromCache);
            Assert.True(SpeedProbe.MeasureOrReuse(info.Path, info.ModelId, 1, cache).FromCache);
            Assert.True(SpeedProbe.MeasureOrReuse(info.Path, info.ModelId, 2, cache).FromCache);
            // Another model id is not reused.
            Assert.False(SpeedProbe.MeasureOrReuse(info.Path, "another-model", 1, cache).FromCache);

            // A damaged cache only costs a new measurement.
            File.WriteAllText(file, "{ not json");
            Assert.False(SpeedProbe.MeasureOrReuse(info.Path, info.ModelId, 1, cache).FromCache);
            Assert.True(SpeedProbe.MeasureOrReuse(info.Path, info.ModelId, 1, cache).FromCache);
        }
        finally
        {
            Directory.Delete(cache, recursive: true);
        }
    }

    [Fact]
    public void TheProbeCacheFollowsXdgCacheHome()
    {
        var saved = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        try
        {
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", "/tmp/xdg-test");
            Assert.Equal("/tmp/xdg-test/potluck", SpeedProbe.DefaultCacheDirectory());
            // A relative value is invalid per the XDG spec and ignored.
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", "relative/cache");
            Assert.EndsWith(Path.Combine(".cache", "potluck"), SpeedProbe.DefaultCacheDirectory());
        }
        finally
        {
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", saved);
        }
    }

    [Fact]
    public void CapacityFollowsUnevenLayerSizes()
    {
        var capacity = new NodeCapacity([10, 10, 50, 10, 10], 60);
        Assert.Equal(2, capacity.MaxEnd(0)); // 10+10, the 50 does not fit on top
        Assert.Equal(4, capacity.MaxEnd(2)); // 50+10
        Assert.Equal(5, capacity.MaxEnd(3));
        Assert.Equal((0, 2), (SpanChooser.Choose(5, [], capacity).Start, SpanChooser.Choose(5, [], capacity).End));
    }

    [Theory]
    [InlineData("512M", 512L << 20)]
    [InlineData("8G", 8L << 30)]
    [InlineData("1.5GiB", 3L << 29)]
    [InlineData("64kb", 64L << 10)]
    [InlineData("123456", 123456L)]
    public void MemorySizesParse(string text, long expected)
    {
        Assert.True(NodeCapacity.TryParseSize(text, out var bytes));
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("")]
    [InlineData("G")]
    [InlineData("-1G")]
    [InlineData("8X")]
    [InlineData("lots")]
    public void BadMemorySizesAreRefused(string text) => Assert.False(NodeCapacity.TryParseSize(text, out _));

    [Fact]
    public void ExpertLayersCostTheirExpertsAndLatentLayersTheirLatentCache()
    {
        NativeRuntime.EnsureLoaded();
        // deepseek2's example: one leading dense layer, then expert layers; latent attention caches one row per position.
        var spec = Potluck.Inference.Models.TestModelSpec.ForArchitecture("deepseek2") with { ExpertCount = 16 };
        var info = GgufModel.Inspect(TestModels.Get(spec, GgmlType.Q8_0));
        var weightsOnly = NodeCapacity.EstimateLayerBytes(info, kvTokens: 0);
        long experts = info.Tensors.Where(t => t.Name.StartsWith("blk.1.", StringComparison.Ordinal) && t.Name.Contains("_exps", StringComparison.Ordinal)).Sum(t => t.Bytes);
        Assert.True(experts > 0);
        Assert.True(weightsOnly[1] > weightsOnly[0] + experts / 2, $"dense layer {weightsOnly[0]} B, expert layer {weightsOnly[1]} B (experts {experts} B)");

        using var lease = Compute.SharedModel.Acquire(info.Path);
        for (var layer = 0; layer < info.LayerCount; layer++)
        {
            using var span = new LayerSpan(lease.Model, layer, layer + 1);
            Assert.Equal(span.KvBytesPerToken, NodeCapacity.KvBytesPerToken(info, layer));
        }
        // The latent row (kv_lora_rank + rope dims, F16) is far less than K and V of every head.
        Assert.True(NodeCapacity.KvBytesPerToken(info, 0) < 2L * info.HeadCount * info.HeadDim * sizeof(ushort));
    }

    [Fact]
    public void LayerBytesComeFromTheTensorIndexPlusTheKvBudget()
    {
        NativeRuntime.EnsureLoaded();
        var info = GgufModel.Inspect(TestModels.Small(GgmlType.Q8_0));
        var weightsOnly = NodeCapacity.EstimateLayerBytes(info, kvTokens: 0);
        Assert.Equal(info.LayerCount, weightsOnly.Length);
        long blockBytes = 0;
        foreach (var tensor in info.Tensors)
            if (tensor.Name.StartsWith("blk.", StringComparison.Ordinal)) blockBytes += tensor.Bytes;
        Assert.Equal(blockBytes, weightsOnly.Sum());
        Assert.All(weightsOnly, b => Assert.Equal(weightsOnly[0], b));

        // F16 K and V per token per layer, exactly what the engine's LayerSpan reports for one layer.
        // Through the process-wide model, as the nodes in other tests of this process use it.
        using var lease = Compute.SharedModel.Acquire(info.Path);
        using var span = new LayerSpan(lease.Model, 0, 1);
        Assert.Equal(span.KvBytesPerToken, NodeCapacity.KvBytesPerToken(info, 0));
        var withKv = NodeCapacity.EstimateLayerBytes(info, kvTokens: 1000);
        Assert.Equal(weightsOnly[0] + 1000 * span.KvBytesPerToken, withKv[0]);
        Assert.True(NodeCapacity.AvailableMemoryBytes() > 0);
    }

    [Fact]
    public void TheJoinDocumentRoundTripsAndBadOnesAreRefused()
    {
        var info = new PoolJoinInfo(new JoinModel("abc", "demo", 8, "llama"), "potluck", new JoinMembership(JoinMembership.Development, "10.0.0.1:11110"),
            [new JoinSpan("n1", "http://10.0.0.2:7100", 0, 4, true, 2, 3.5, 100, 200, 1.25)]);
        var json = info.ToJson();
        Assert.Contains("\"cluster_id\":\"potluck\"", json);
        Assert.Contains("\"steps_per_second\":3.5", json);
        var back = PoolJoinInfo.Parse(json);
        Assert.Equal(info.Model, back.Model);
        Assert.Equal(info.Membership, back.Membership);
        Assert.Equal(info.Spans.Single(), back.Spans.Single());
        // Older gateways send no "joining": it reads as a serving span.
        Assert.Contains("\"joining\":false", json);
        Assert.False(PoolJoinInfo.Parse(json.Replace(",\"joining\":false", "", StringComparison.Ordinal)).Spans.Single().Joining);

        Assert.Throws<FormatException>(() => PoolJoinInfo.Parse("<html>not json</html>"));
        Assert.Throws<FormatException>(() => PoolJoinInfo.Parse("{}"));
        Assert.Throws<FormatException>(() => PoolJoinInfo.Parse(json.Replace("development", "carrier-pigeon", StringComparison.Ordinal)));
        Assert.Throws<FormatException>(() => PoolJoinInfo.Parse(json.Replace("\"end\":4", "\"end\":9", StringComparison.Ordinal)));
    }
}
