using Potluck.Node;

// Usage: --model PATH --layers A-B --node-id ID --grpc-port P --silo-port S [--gateway-port G] [--seed host:port] [--redis conn] [--fast]
var values = new Dictionary<string, string>(StringComparer.Ordinal);
var fast = false;
for (var i = 0; i < args.Length; i++)
{
    if (args[i] == "--fast") fast = true;
    else if (args[i].StartsWith("--", StringComparison.Ordinal) && i + 1 < args.Length) values[args[i][2..]] = args[++i];
    else
    {
        Console.Error.WriteLine($"unexpected argument '{args[i]}'");
        return 64;
    }
}
string Get(string key) => values.TryGetValue(key, out var v) ? v : throw new ArgumentException($"--{key} is required");
var layers = Get("layers").Split('-');
var options = new NodeOptions
{
    ModelPath = Get("model"),
    LayerStart = int.Parse(layers[0]),
    LayerEnd = int.Parse(layers[1]),
    NodeId = Get("node-id"),
    GrpcPort = int.Parse(Get("grpc-port")),
    SiloPort = int.Parse(Get("silo-port")),
    GatewayPort = values.TryGetValue("gateway-port", out var g) ? int.Parse(g) : 0,
    PrimarySiloEndpoint = values.GetValueOrDefault("seed"),
    RedisConnectionString = values.GetValueOrDefault("redis"),
    FastFailureDetection = fast,
    Threads = 1,
    ReportPeriod = TimeSpan.FromSeconds(1),
    ClusterId = values.GetValueOrDefault("cluster") ?? "potluck",
};
return await NodeHost.RunAsync(options, CancellationToken.None);
