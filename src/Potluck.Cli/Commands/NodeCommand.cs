using System.CommandLine;
using Potluck.Node;

namespace Potluck.Cli.Commands;

/// <summary>`potluck node`: one node process (an Orleans silo plus the Stage gRPC server) holding a span of layers.</summary>
public static class NodeCommand
{
    public static Command Create()
    {
        var defaults = new NodeOptions { ModelPath = "", LayerStart = 0, LayerEnd = 1 };
        var model = new Option<FileInfo>("--model") { Description = "The GGUF file this node serves layers of (every node of a pool holds the same file)", Required = true };
        var layers = new Option<string?>("--layers") { Description = "Layers to load as A-B, meaning [A, B)" };
        var join = new Option<string?>("--join") { Description = "Seed silo to join, HOST:PORT (the gateway's or the first node's silo endpoint); omit to be the primary silo" };
        var redis = new Option<string?>("--redis") { Description = "Use Redis membership at HOST:PORT instead of a seed" };
        var token = new Option<string?>("--token") { Description = "Pool join token (for community pools; not supported yet)" };
        var host = new Option<string>("--host") { Description = "Host or IP the rest of the pool uses to reach this node", DefaultValueFactory = _ => defaults.AdvertisedHost };
        var listen = new Option<string?>("--listen") { Description = "Address to bind (default: loopback when --host is loopback, else all interfaces)" };
        var port = new Option<int>("--port") { Description = "gRPC port for hidden states", DefaultValueFactory = _ => defaults.GrpcPort };
        var siloPort = new Option<int>("--silo-port") { Description = "Orleans silo-to-silo port; every pool member must reach it", DefaultValueFactory = _ => defaults.SiloPort };
        var nodeId = new Option<string?>("--node-id") { Description = "Unique node name in the pool (default: node-HOST-PORT)" };
        var clusterId = new Option<string>("--cluster-id") { Description = "Pool name shared by the gateway and its nodes", DefaultValueFactory = _ => defaults.ClusterId };
        var kvTokens = new Option<long?>("--kv-tokens") { Description = "KV cache budget in tokens over all sessions (default: 4 full contexts)" };
        var threads = new Option<int>("--threads") { Description = "Compute threads (0 = all cores)", DefaultValueFactory = _ => 0 };
        var maxRows = new Option<int>("--max-rows") { Description = "Most rows one step may carry (prefill chunk)", DefaultValueFactory = _ => defaults.MaxRowsPerStep };
        var fastFailure = new Option<bool>("--fast-failure-detection") { Description = "Tight membership probing (tests only)", Hidden = true };
        var parentPid = HostedCommand.ParentPidOption();
        var command = new Command("node", "Run one node: load a span of the model's layers and serve it to the pool")
        {
            model, layers, join, redis, token, host, listen, port, siloPort, nodeId, clusterId, kvTokens, threads, maxRows, fastFailure, parentPid,
        };
        command.SetAction(async (parse, _) =>
        {
            var layerText = parse.GetValue(layers)
                ?? throw new UsageException("--layers A-B is required: choosing a span automatically is not available yet");
            var (start, end) = HostedCommand.ParseLayers(layerText);
            if (parse.GetValue(token) is not null)
                throw new UsageException("--token is not supported yet: nodes join by --join HOST:PORT or --redis on a trusted network");
            var seed = parse.GetValue(join);
            if (seed is not null && seed.Contains("://", StringComparison.Ordinal))
                throw new UsageException($"--join takes the seed silo's HOST:PORT; joining by URL ({seed}) is not available yet");
            if (parse.GetValue(threads) < 0) throw new UsageException("--threads must be 0 (all cores) or more");
            if (parse.GetValue(maxRows) < 1) throw new UsageException("--max-rows must be at least 1");
            var options = new NodeOptions
            {
                ModelPath = parse.GetRequiredValue(model).FullName,
                LayerStart = start,
                LayerEnd = end,
                NodeId = parse.GetValue(nodeId),
                GrpcPort = HostedCommand.ValidatePort(parse.GetValue(port), "--port"),
                SiloPort = HostedCommand.ValidatePort(parse.GetValue(siloPort), "--silo-port"),
                PrimarySiloEndpoint = seed,
                RedisConnectionString = parse.GetValue(redis),
                AdvertisedHost = parse.GetRequiredValue(host),
                ListenAddress = parse.GetValue(listen),
                KvBudgetTokens = parse.GetValue(kvTokens),
                Threads = parse.GetValue(threads),
                MaxRowsPerStep = parse.GetValue(maxRows),
                ClusterId = parse.GetRequiredValue(clusterId),
                FastFailureDetection = parse.GetValue(fastFailure),
            };

            // Read the header first: a missing, corrupt or too-short model is one clear line, not a host crash.
            var info = ModelCommands.InspectOrFail(options.ModelPath);
            if (end > info.LayerCount)
                throw new CliFailureException($"--layers {layerText} is outside the model: {Path.GetFileName(options.ModelPath)} has {info.LayerCount} layers (0-{info.LayerCount})");
            HostedCommand.ApplyVerbosity(parse.GetValue(CliApplication.Verbose));

            return await HostedCommand.RunAsync(parse.GetValue(parentPid), "node", stop => NodeHost.RunAsync(options, stop));
        });
        return CliApplication.AddExamples(command,
            "potluck node --model ./model.gguf --layers 0-16 --join 192.168.1.10:11110",
            "potluck node --model ./model.gguf --layers 16-32 --host 192.168.1.12 --redis 192.168.1.10:6379");
    }
}
