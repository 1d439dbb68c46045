using Microsoft.Extensions.Configuration;
using Potluck.Hosting;
using Potluck.Node;

// Test-only node launcher, configured the way a container is: environment variables Potluck__Node__* and
// Potluck__Cluster__* (the shipped configuration path, NodeOptions.FromConfiguration), with optional flags applied
// over them. Exit codes are the shared table (Potluck.Hosting.ExitCodes).
// Flags: --model PATH --layers A:B --node-id ID --grpc-port P --silo-port S [--gateway-port G] [--seed host:port]
//        [--redis conn] [--cluster ID] [--fast]
var flagKeys = new Dictionary<string, string>(StringComparer.Ordinal)
{
    ["model"] = nameof(NodeOptions.ModelPath),
    ["layers"] = "Layers",
    ["node-id"] = nameof(NodeOptions.NodeId),
    ["grpc-port"] = nameof(NodeOptions.GrpcPort),
    ["silo-port"] = nameof(NodeOptions.SiloPort),
    ["gateway-port"] = nameof(NodeOptions.GatewayPort),
    ["seed"] = nameof(NodeOptions.PrimarySiloEndpoint),
    ["redis"] = nameof(NodeOptions.RedisConnectionString),
    ["cluster"] = nameof(NodeOptions.ClusterId),
};
string Key(string name) => $"{NodeOptions.ConfigurationSection}:{name}";

var flags = new Dictionary<string, string?>(StringComparer.Ordinal);
for (var i = 0; i < args.Length; i++)
{
    if (args[i] == "--fast") flags[Key(nameof(NodeOptions.FastFailureDetection))] = "true";
    else if (args[i].StartsWith("--", StringComparison.Ordinal) && flagKeys.TryGetValue(args[i][2..], out var key) && i + 1 < args.Length)
        flags[Key(key)] = args[++i];
    else
    {
        Console.Error.WriteLine($"unexpected argument '{args[i]}'");
        return ExitCodes.Usage;
    }
}

var configuration = new ConfigurationBuilder()
    // Test defaults: one compute thread (tests run several nodes on 2 cores), frequent status reports.
    .AddInMemoryCollection(new Dictionary<string, string?>
    {
        [Key(nameof(NodeOptions.Threads))] = "1",
        [Key(nameof(NodeOptions.ReportPeriod))] = "1",
    })
    .AddEnvironmentVariables()
    .AddInMemoryCollection(flags)
    .Build();

NodeOptions options;
try
{
    options = NodeOptions.FromConfiguration(configuration);
}
catch (NodeConfigurationException e)
{
    Console.Error.WriteLine($"potluck node: error: {e.Message}");
    return ExitCodes.Usage;
}
return await NodeHost.RunAsync(options, CancellationToken.None);
