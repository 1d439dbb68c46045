using Microsoft.Extensions.Configuration;
using Potluck.Inference.Gguf;
using Potluck.Node.Hosting;

namespace Potluck.Node.Tests;

/// <summary>How a node's KV budget is chosen: explicit tokens, bytes at the span's width, or its share of free memory.</summary>
public sealed class KvBudgetTests
{
    private static readonly ModelInfo Model = Potluck.Inference.Engine.GgufModel.Inspect(TestModels.Small(GgmlType.Q8_0));

    [Theory]
    [InlineData("65536", 65536L, null)]
    [InlineData("512MB", null, 512_000_000L)]
    [InlineData("8GiB", null, 8L << 30)]
    [InlineData("1.5G", null, 1_500_000_000L)]
    [InlineData("4096 tokens", 4096L, null)]
    public void Parse_reads_tokens_or_sizes(string text, long? tokens, long? bytes) =>
        Assert.Equal((tokens, bytes), KvBudget.Parse(text)!.Value);

    [Theory]
    [InlineData("")]
    [InlineData("0")]
    [InlineData("-5")]
    [InlineData("lots")]
    [InlineData("5XB")]
    [InlineData("1.5 tokens")]
    public void Parse_refuses_what_is_neither(string text) => Assert.Null(KvBudget.Parse(text));

    [Fact]
    public void Explicit_tokens_win_then_bytes_convert_at_the_spans_bytes_per_token()
    {
        var perToken = Model.KvLayers.Take(2).Sum(k => k.BytesPerToken);
        var options = new NodeOptions { ModelPath = "m", LayerStart = 0, LayerEnd = 2 };
        Assert.Equal(777, KvBudget.ResolveTokens(options with { KvBudgetTokens = 777, KvBudgetBytes = 1 << 30 }, Model, 0, 2, 1L << 40));
        Assert.Equal((1L << 30) / perToken, KvBudget.ResolveTokens(options with { KvBudgetBytes = 1 << 30 }, Model, 0, 2, 1L << 40));
    }

    [Fact]
    public void The_default_shares_free_memory_among_the_hosts_nodes_and_keeps_at_least_one_context()
    {
        var options = new NodeOptions { ModelPath = "m", LayerStart = 0, LayerEnd = 2 };
        var alone = KvBudget.ResolveTokens(options, Model, 0, 2, 8L << 30);
        var shared = KvBudget.ResolveTokens(options with { NodesOnHost = 4 }, Model, 0, 2, 8L << 30);
        Assert.True(alone > 3.9 * shared && alone < 4.1 * shared, $"{alone} tokens alone, {shared} with 4 nodes");
        // A final span keeps no output log, so the same memory holds more tokens.
        var last = Model.LayerCount;
        Assert.True(KvBudget.ResolveTokens(options, Model, last - 2, last, 8L << 30) > alone);
        Assert.Equal(Model.ContextLength, KvBudget.ResolveTokens(options, Model, 0, 2, 1024));
    }

    [Fact]
    public void Configuration_binds_bytes_and_nodes_on_host()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Potluck:Node:ModelPath"] = "/m.gguf",
            ["Potluck:Node:Layers"] = "0:2",
            ["Potluck:Node:KvBudgetBytes"] = "1073741824",
            ["Potluck:Node:NodesOnHost"] = "3",
        }).Build();
        var options = NodeOptions.FromConfiguration(configuration);
        Assert.Equal((1073741824L, 3), (options.KvBudgetBytes, options.NodesOnHost));
    }
}
