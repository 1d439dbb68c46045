using Microsoft.Extensions.Configuration;
using Potluck.Hosting;
using Potluck.Node.Joining;

namespace Potluck.Node.Tests;

/// <summary>Node settings from configuration in the container form (environment variables Potluck__Node__*).</summary>
public sealed class NodeOptionsConfigurationTests
{
    private static IConfiguration Config(params (string Key, string Value)[] values) =>
        new ConfigurationBuilder().AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>(v.Key, v.Value))).Build();

    [Fact]
    public void Environment_variables_in_double_underscore_form_bind_every_setting()
    {
        // Through the real environment-variable provider, with a prefix so this test's variables are its own.
        var prefix = $"POTLUCK_CFG_TEST_{Guid.NewGuid():N}_";
        var variables = new Dictionary<string, string>
        {
            ["Potluck__Node__ModelPath"] = "/models/llama.gguf",
            ["Potluck__Node__Layers"] = "4:12",
            ["Potluck__Node__NodeId"] = "node-a",
            ["Potluck__Node__GrpcPort"] = "7200",
            ["Potluck__Node__SiloPort"] = "11200",
            ["Potluck__Node__GatewayPort"] = "30000",
            ["Potluck__Node__RedisConnectionString"] = "redis:6379,password=secret",
            ["Potluck__Node__AdvertisedHost"] = "10.0.0.7",
            ["Potluck__Node__ListenAddress"] = "0.0.0.0",
            ["Potluck__Node__KvBudgetTokens"] = "8192",
            ["Potluck__Node__Threads"] = "6",
            ["Potluck__Node__MaxRowsPerStep"] = "256",
            ["Potluck__Node__ClusterId"] = "lan-pool",
            ["Potluck__Node__ReportPeriod"] = "0.5",
            ["Potluck__Node__FastFailureDetection"] = "true",
            ["Potluck__Node__StartupTimeout"] = "00:00:30",
        };
        try
        {
            foreach (var (key, value) in variables) Environment.SetEnvironmentVariable(prefix + key, value);
            var configuration = new ConfigurationBuilder().AddEnvironmentVariables(prefix).Build();
            var options = NodeOptions.FromConfiguration(configuration);

            Assert.Equal("/models/llama.gguf", options.ModelPath);
            Assert.Equal((4, 12), (options.LayerStart, options.LayerEnd));
            Assert.Equal("node-a", options.ResolvedNodeId);
            Assert.Equal((7200, 11200, 30000), (options.GrpcPort, options.SiloPort, options.GatewayPort));
            Assert.Equal("redis:6379,password=secret", options.RedisConnectionString);
            Assert.Equal("10.0.0.7", options.AdvertisedHost);
            Assert.Equal("https://10.0.0.7:7200", options.GrpcEndpoint);
            Assert.Equal("0.0.0.0", options.ListenAddress);
            Assert.Equal(8192, options.KvBudgetTokens);
            Assert.Equal(6, options.Threads);
            Assert.Equal(256, options.MaxRowsPerStep);
            Assert.Equal("lan-pool", options.ClusterId);
            Assert.Equal(TimeSpan.FromMilliseconds(500), options.ReportPeriod);
            Assert.True(options.FastFailureDetection);
            Assert.Equal(TimeSpan.FromSeconds(30), options.StartupTimeout);
        }
        finally
        {
            foreach (var key in variables.Keys) Environment.SetEnvironmentVariable(prefix + key, null);
        }
    }

    [Fact]
    public void Absent_and_empty_keys_keep_the_defaults()
    {
        var options = NodeOptions.FromConfiguration(Config(
            ("Potluck:Node:ModelPath", "m.gguf"), ("Potluck:Node:LayerStart", "2"), ("Potluck:Node:LayerEnd", "3"),
            ("Potluck:Node:RedisConnectionString", ""), ("Potluck:Node:GrpcPort", " ")));
        var defaults = new NodeOptions { ModelPath = "m.gguf", LayerStart = 2, LayerEnd = 3 };
        Assert.Equal(defaults, options);
        Assert.Null(options.RedisConnectionString);
    }

    [Fact]
    public void Configuration_applies_over_given_options_and_leaves_the_rest()
    {
        var fromFlags = new NodeOptions { ModelPath = "flag.gguf", LayerStart = 0, LayerEnd = 2, GrpcPort = 9000, ClusterId = "flags" };
        var merged = fromFlags.WithConfiguration(Config(("Potluck:Node:ClusterId", "env"), ("Potluck:Node:SiloPort", "12000")));
        Assert.Equal(fromFlags with { ClusterId = "env", SiloPort = 12000 }, merged);
        // Nothing under the section: unchanged.
        Assert.Equal(fromFlags, fromFlags.WithConfiguration(Config(("Other:ClusterId", "x"))));
    }

    [Theory]
    [InlineData("Potluck:Node:Layers", "4", "Potluck__Node__Layers")]
    [InlineData("Potluck:Node:Layers", "3-3", "Potluck__Node__Layers")]
    [InlineData("Potluck:Node:Layers", "-1-3", "Potluck__Node__Layers")]
    [InlineData("Potluck:Node:Layers", "3:3", "Potluck__Node__Layers")]
    [InlineData("Potluck:Node:Layers", "-1:3", "Potluck__Node__Layers")]
    [InlineData("Potluck:Node:Layers", "[4, 8)", "Potluck__Node__Layers")]
    [InlineData("Potluck:Node:GrpcPort", "70000", "Potluck__Node__GrpcPort")]
    [InlineData("Potluck:Node:SiloPort", "abc", "Potluck__Node__SiloPort")]
    [InlineData("Potluck:Node:Threads", "-2", "Potluck__Node__Threads")]
    [InlineData("Potluck:Node:KvBudgetTokens", "0", "Potluck__Node__KvBudgetTokens")]
    [InlineData("Potluck:Node:FastFailureDetection", "maybe", "Potluck__Node__FastFailureDetection")]
    [InlineData("Potluck:Node:ReportPeriod", "-1", "Potluck__Node__ReportPeriod")]
    public void Bad_values_are_rejected_naming_the_variable(string key, string value, string variable)
    {
        var values = new Dictionary<string, string> { ["Potluck:Node:ModelPath"] = "m.gguf", ["Potluck:Node:Layers"] = "0-2", [key] = value };
        var error = Assert.Throws<NodeConfigurationException>(() =>
            NodeOptions.FromConfiguration(Config(values.Select(kv => (kv.Key, kv.Value)).ToArray())));
        Assert.Contains(variable, error.Message);
        Assert.Contains($"'{value}'", error.Message);
    }

    [Fact]
    public void Missing_model_or_layers_is_a_clear_error()
    {
        var noModel = Assert.Throws<NodeConfigurationException>(() => NodeOptions.FromConfiguration(Config(("Potluck:Node:Layers", "0-2"))));
        Assert.Contains("Potluck__Node__ModelPath", noModel.Message);
        var noLayers = Assert.Throws<NodeConfigurationException>(() => NodeOptions.FromConfiguration(Config(("Potluck:Node:ModelPath", "m.gguf"))));
        Assert.Contains("Potluck__Node__Layers", noLayers.Message);
        // LayerStart alone is not a span either.
        Assert.Throws<NodeConfigurationException>(() => NodeOptions.FromConfiguration(Config(("Potluck:Node:ModelPath", "m.gguf"), ("Potluck:Node:LayerStart", "1"))));
    }

    [Fact]
    public void Pool_wide_cluster_settings_apply_and_the_node_section_overrides_them()
    {
        var configuration = Config(("Potluck:Node:ModelPath", "m.gguf"), ("Potluck:Node:Layers", "0-2"),
            ("Potluck:Cluster:ClusterId", "lan-pool"), ("Potluck:Cluster:RedisConnectionString", "redis:6379"),
            ("Potluck:Cluster:FastFailureDetection", "true"), ("Potluck:Node:RedisConnectionString", "other:6380"));
        var options = NodeOptions.FromConfiguration(configuration);
        Assert.Equal("lan-pool", options.ClusterId);
        Assert.Equal("other:6380", options.RedisConnectionString);
        Assert.True(options.FastFailureDetection);
        Assert.True(NodeOptions.IsSet(configuration, nameof(NodeOptions.ClusterId)));
        Assert.False(NodeOptions.IsSet(configuration, nameof(NodeOptions.AdvertisedHost)));

        var bad = Assert.Throws<ConfigurationUsageException>(() => NodeOptions.FromConfiguration(Config(
            ("Potluck:Node:ModelPath", "m.gguf"), ("Potluck:Node:Layers", "0-2"), ("Potluck:Cluster:FastFailureDetection", "sometimes"))));
        Assert.Contains("Potluck__Cluster__FastFailureDetection", bad.Message);
    }

    [Fact]
    public void Join_is_a_seed_silo_or_the_gateway_url_and_a_url_needs_no_layers()
    {
        var bySeed = Config(("Potluck:Node:ModelPath", "m.gguf"), ("Potluck:Node:Layers", "0-2"), ("Potluck:Node:Join", "10.0.0.1:11110"));
        Assert.Equal("10.0.0.1:11110", NodeOptions.FromConfiguration(bySeed).PrimarySiloEndpoint);
        Assert.Null(NodeJoinOptions.FromConfiguration(bySeed).GatewayUrl);

        var byUrl = Config(("Potluck:Node:ModelPath", "m.gguf"), ("Potluck:Node:Join", "http://10.0.0.1:8080"), ("Potluck:Node:Memory", "6G"),
            ("Potluck:Node:MaxLayers", "4"), ("Potluck:Node:Rebalance", "true"), ("Potluck:Node:RebalanceEvery", "5"));
        Assert.False(NodeOptions.HasLayers(byUrl));
        var options = NodeOptions.FromConfiguration(byUrl, layersRequired: false);
        Assert.Null(options.PrimarySiloEndpoint);
        var join = NodeJoinOptions.FromConfiguration(byUrl);
        Assert.Equal(new Uri("http://10.0.0.1:8080"), join.GatewayUrl);
        Assert.Equal(6L << 30, join.MemoryBudgetBytes);
        Assert.Equal(4, join.MaxLayers);
        Assert.True(join.Rebalance);
        Assert.Equal(TimeSpan.FromSeconds(5), join.RebalancePeriod);
        // Without a URL the span stays required.
        Assert.Throws<NodeConfigurationException>(() => NodeOptions.FromConfiguration(byUrl));

        var badMemory = Assert.Throws<NodeConfigurationException>(() => NodeJoinOptions.FromConfiguration(Config(("Potluck:Node:Memory", "lots"))));
        Assert.Contains("Potluck__Node__Memory", badMemory.Message);
    }

    [Theory]
    [InlineData("0", 0, 3)]
    [InlineData("2", 6, 8)]
    public void A_statefulset_pod_takes_the_span_of_its_ordinal(string ordinal, int start, int end)
    {
        var options = NodeOptions.FromConfiguration(Config(("Potluck:Node:ModelPath", "m.gguf"),
            ("Potluck:Node:LayersByOrdinal", "0:3 3:6 6:8"), ("Potluck:Node:Ordinal", ordinal)));
        Assert.Equal((start, end), (options.LayerStart, options.LayerEnd));
        Assert.Empty(options.Warnings);
    }

    [Fact]
    public void The_old_dash_form_still_works_and_warns_what_it_means()
    {
        var options = NodeOptions.FromConfiguration(Config(("Potluck:Node:ModelPath", "m.gguf"), ("Potluck:Node:Layers", "4-8")));
        Assert.Equal((4, 8), (options.LayerStart, options.LayerEnd));
        var warning = Assert.Single(options.Warnings);
        Assert.Contains("Potluck__Node__Layers", warning);
        Assert.Contains("means layers [4, 8)", warning);
        Assert.Contains("write 4:8", warning);
        Assert.Empty(NodeOptions.FromConfiguration(Config(("Potluck:Node:ModelPath", "m.gguf"), ("Potluck:Node:Layers", "4:8"))).Warnings);
    }

    [Fact]
    public void A_pod_beyond_the_listed_spans_says_why_it_stops()
    {
        var error = Assert.Throws<NodeConfigurationException>(() => NodeOptions.FromConfiguration(Config(("Potluck:Node:ModelPath", "m.gguf"),
            ("Potluck:Node:LayersByOrdinal", "0-3 3-6 6-8"), ("Potluck:Node:Ordinal", "3"))));
        Assert.Contains("no span for ordinal '3'", error.Message);
        Assert.Contains("Potluck__Node__LayersByOrdinal", error.Message);
    }

    [Theory]
    [InlineData("Potluck:Node:NodeId", "a/b", "NodeId 'a/b'")]
    [InlineData("Potluck:Node:ListenAddress", "not-an-ip", "ListenAddress 'not-an-ip'")]
    [InlineData("Potluck:Node:PrimarySiloEndpoint", "seed-without-port", "PrimarySiloEndpoint 'seed-without-port'")]
    public void The_validator_rejects_values_that_parse_but_cannot_work(string key, string value, string expected)
    {
        var error = Assert.Throws<NodeConfigurationException>(() => NodeOptions.FromConfiguration(Config(
            ("Potluck:Node:ModelPath", "m.gguf"), ("Potluck:Node:Layers", "0-2"), (key, value))));
        Assert.Contains(expected, error.Message);
        // A usage error in the one exit-code table.
        Assert.IsAssignableFrom<HostExitException>(error);
        Assert.Equal(ExitCodes.Usage, ((HostExitException)error).ExitCode);
    }
}
