using Microsoft.Extensions.Configuration;

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
            ["Potluck__Node__Layers"] = "4-12",
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
            Assert.Equal("http://10.0.0.7:7200", options.GrpcEndpoint);
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
}
