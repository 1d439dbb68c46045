using Potluck.Contracts.Joining;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;
using Potluck.Inference.Tests;
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
    public void AFullPoolGetsAReplicaOfItsBusiestSpanPerReplica()
    {
        JoinSpan[] pool = [Span("a", 0, 4, stepsPerSecond: 30), Span("b", 4, 8, stepsPerSecond: 50), Span("c", 8, 12, stepsPerSecond: 40)];
        Assert.Equal((4, 8), Pick(Room(100), pool));
        // [4,8) already has two replicas (25 steps/s each): [8,12) is now the busiest per replica.
        Assert.Equal((8, 12), Pick(Room(100), [.. pool, Span("d", 4, 8, stepsPerSecond: 0)]));
        // Idle pool: open sessions, then fewer replicas, then the slowest span decide.
        Assert.Equal((4, 8), Pick(Room(100), Span("a", 0, 4, sessions: 1), Span("b", 4, 8, sessions: 3), Span("c", 8, 12)));
        Assert.Equal((8, 12), Pick(Room(100), Span("a", 0, 4), Span("a2", 0, 4), Span("b", 4, 8), Span("b2", 4, 8), Span("c", 8, 12)));
        Assert.Equal((4, 8), Pick(Room(100), Span("a", 0, 4, msPerToken: 2), Span("b", 4, 8, msPerToken: 5), Span("c", 8, 12, msPerToken: 2)));
    }

    [Fact]
    public void AReplicaMustFitAndASpanNobodyCanHoldIsAClearRefusal()
    {
        // [0,8) is busier but does not fit in 5 layers; [8,12) does.
        Assert.Equal((8, 12), Pick(Room(5), Span("a", 0, 8, stepsPerSecond: 90), Span("b", 8, 12, stepsPerSecond: 10)));
        var tooWide = Assert.Throws<SpanChoiceException>(() => Pick(Room(3), Span("a", 0, 6), Span("b", 6, 12)));
        Assert.Contains("--layers", tooWide.Message);
        var nothing = Assert.Throws<SpanChoiceException>(() => Pick(new NodeCapacity(Enumerable.Repeat(100L, Layers).ToArray(), 99)));
        Assert.Contains("--memory", nothing.Message);
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
        Assert.Equal(span.KvBytesPerToken, NodeCapacity.KvBytesPerTokenPerLayer(info));
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

        Assert.Throws<FormatException>(() => PoolJoinInfo.Parse("<html>not json</html>"));
        Assert.Throws<FormatException>(() => PoolJoinInfo.Parse("{}"));
        Assert.Throws<FormatException>(() => PoolJoinInfo.Parse(json.Replace("development", "carrier-pigeon", StringComparison.Ordinal)));
        Assert.Throws<FormatException>(() => PoolJoinInfo.Parse(json.Replace("\"end\":4", "\"end\":9", StringComparison.Ordinal)));
    }
}
