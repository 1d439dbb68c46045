using Potluck.Cli.Serve;

namespace Potluck.Cli.Tests;

public sealed class LayerPlanTests
{
    [Theory]
    [InlineData(8, 2, 1, "0:4,4:8")]
    [InlineData(8, 3, 1, "0:3,3:6,6:8")]
    [InlineData(8, 4, 2, "0:4,0:4,4:8,4:8")]
    [InlineData(5, 1, 1, "0:5")]
    [InlineData(3, 3, 1, "0:1,1:2,2:3")]
    public void SpansCoverEveryLayerOnceAndDifferByAtMostOne(int layers, int nodes, int replicas, string expected)
    {
        var plan = LayerPlan.Split(layers, nodes, replicas);
        Assert.Equal(expected, string.Join(',', plan.Select(n => n.Layers)));
        Assert.Equal(Enumerable.Range(1, nodes).Select(i => $"node-{i}"), plan.Select(n => n.Name));
        // Every replica of one span holds the same layers, and consecutive spans meet.
        var spans = plan.GroupBy(n => n.SpanIndex).Select(g => g.First()).ToList();
        Assert.All(plan.GroupBy(n => n.SpanIndex), g => Assert.Equal(replicas, g.Count()));
        Assert.Equal(0, spans[0].Start);
        Assert.Equal(layers, spans[^1].End);
        for (var i = 1; i < spans.Count; i++) Assert.Equal(spans[i - 1].End, spans[i].Start);
    }

    [Theory]
    [InlineData(8, 0, 1)]
    [InlineData(8, 3, 2)]
    [InlineData(8, 2, 0)]
    [InlineData(2, 3, 1)]
    public void ImpossiblePlansAreUsageErrors(int layers, int nodes, int replicas)
    {
        Assert.Throws<UsageException>(() => LayerPlan.Split(layers, nodes, replicas));
    }
}
