using System.CommandLine;
using System.Globalization;
using Microsoft.Extensions.Configuration;
using Potluck.Cluster;
using Potluck.Inference.Gguf;
using Potluck.Node.Hosting;
using Potluck.Node;
using Potluck.Node.Joining;

namespace Potluck.Cli.Commands;

/// <summary>
/// `potluck node`: one node process (an Orleans silo plus the Stage gRPC server) holding a span of layers. The flags
/// become configuration keys of section Potluck:Node over the environment (Potluck__Node__*, Potluck__Cluster__*); the
/// join workflow (<see cref="PoolJoiner"/>) and the host (<see cref="NodeHost"/>) live in the node project.
/// </summary>
public static class NodeCommand
{
    public static Command Create()
    {
        var defaults = new NodeOptions { ModelPath = "", LayerStart = 0, LayerEnd = 1 };
        var model = new Option<FileInfo?>("--model") { Description = "The GGUF file this node serves layers of (every node of a pool holds the same file) [env: Potluck__Node__ModelPath]" };
        var layers = new Option<string?>("--layers") { Description = "Layers to load as A:B, meaning [A, B) (0:4 is the first four); omit with --join URL to let the node choose" };
        var join = new Option<string?>("--join")
        {
            Description = "The pool to join: the gateway's URL (http://HOST:PORT; the node checks the model and can choose its span), " +
                "or a seed silo HOST:PORT (the gateway's or the first node's silo endpoint); omit to be the primary silo",
        };
        var redis = new Option<string?>("--redis") { Description = "Use Redis membership at HOST:PORT instead of a seed" };
        var token = new Option<string?>("--token")
        {
            Description = "Invite to the pool (`potluck pool invite` prints one): with --join URL, redeemed for this node's certificate when it has none yet " +
                "[env: Potluck__Security__JoinToken]",
        };
        var tokenFile = new Option<FileInfo?>("--token-file") { Description = "A file holding the invite (a mounted secret) [env: Potluck__Security__JoinTokenFile]" };
        var maxLayers = new Option<int?>("--max-layers") { Description = "Most layers to hold when choosing a span (no --layers)" };
        var memory = new Option<string?>("--memory") { Description = "Memory for weights and KV when choosing a span, e.g. 6G or 512M (default: what the machine has free)" };
        var advertise = new Option<string?>("--advertise")
        {
            Description = "Host or IP the rest of the pool dials this node at (with --join URL to another machine: the address that reaches it) " +
                $"[default: {defaults.AdvertisedHost}]",
        };
        var listen = new Option<string?>("--listen") { Description = "Address to bind (default: loopback when --advertise is loopback, else all interfaces)" };
        var host = new Option<string?>("--host") { Description = "Deprecated: use --advertise (on `node`, --host always meant the advertised address)" };
        var freePorts = Potluck.Node.Hosting.NodePorts.InContainer ? "" : " [default: a free port; 7100 in a container]";
        var port = new Option<int?>("--port") { Description = "gRPC port for hidden states (0: a free one)" + (freePorts.Length > 0 ? freePorts : $" [default: {defaults.GrpcPort}]") };
        var siloPort = new Option<int?>("--silo-port")
        {
            Description = "Orleans silo-to-silo port; every pool member must reach it (0: a free one)" +
                (freePorts.Length > 0 ? " [default: a free port; 11111 in a container]" : $" [default: {defaults.SiloPort}]"),
        };
        var nodeId = new Option<string?>("--node-id")
        {
            Description = "Unique node name in the pool (default: the id of this machine's pool certificate, else the first HOSTNAME-N no running node holds)",
        };
        var clusterId = new Option<string>("--cluster-id") { Description = "Pool name shared by the gateway and its nodes (with --join URL: the pool's)", DefaultValueFactory = _ => defaults.ClusterId };
        var kvTokens = new Option<long?>("--kv-tokens") { Description = "KV cache budget in tokens over all sessions (same as --kv-budget N)", Hidden = true };
        var kvBudget = new Option<string?>("--kv-budget")
        {
            Description = "KV cache budget over all sessions: tokens (65536) or a size (8GiB, 512MB). Sessions take it in 64-token blocks as they grow " +
                "[default: free memory / --nodes-on-host, less this span's weights]",
        };
        var nodesOnHost = new Option<int>("--nodes-on-host") { Description = "Nodes started on this machine together: the default KV budget shares free memory among them", DefaultValueFactory = _ => 1 };
        var threads = new Option<int>("--threads") { Description = "Compute threads (0 = all cores)", DefaultValueFactory = _ => 0 };
        var maxRows = new Option<int>("--max-rows") { Description = "Most rows one step may carry (prefill chunk)", DefaultValueFactory = _ => defaults.MaxRowsPerStep };
        var fastFailure = new Option<bool>("--fast-failure-detection") { Description = "Tight membership probing (tests only)", Hidden = true };
        var drainTimeout = new Option<double>("--drain-timeout")
        {
            Description = "Seconds a stopping node (SIGTERM) lets open sessions finish before ending them; give a supervisor's grace period 20 s more",
            DefaultValueFactory = _ => defaults.DrainTimeout.TotalSeconds,
        };
        var rebalance = new Option<bool>("--rebalance")
        {
            Description = "Keep choosing (with --join URL, no --layers): run the node as a child process and move it to a span the pool " +
                "needs more (layers nobody holds, or a far weaker span) when its own span has another replica; the new span loads before the old one stops",
        };
        var rebalanceEvery = new Option<int>("--rebalance-every")
        {
            Description = $"Seconds between rebalance checks ({NodeJoinOptions.MinRebalanceSeconds}-{NodeJoinOptions.MaxRebalanceSeconds})",
            DefaultValueFactory = _ => NodeJoinOptions.DefaultRebalanceSeconds,
        };
        var parentPid = HostedCommand.ParentPidOption();
        var command = new Command("node", "Run one node: load a span of the model's layers and serve it to the pool (flags override Potluck__Node__* environment variables)")
        {
            model, layers, join, redis, token, tokenFile, maxLayers, memory, advertise, listen, host, port, siloPort, nodeId, clusterId, kvTokens, kvBudget, nodesOnHost, threads, maxRows,
            fastFailure, drainTimeout, rebalance, rebalanceEvery, parentPid,
        };
        command.SetAction(async (parse, ct) =>
        {
            // Flags are checked as flags (their own messages); the environment's values by the options binder.
            if (parse.GetValue(token) is not null && parse.GetValue(tokenFile) is not null)
                throw new UsageException("pass the invite as --token or as --token-file, not both");
            if ((parse.GetValue(token) is not null || parse.GetValue(tokenFile) is not null) && !PoolJoinClient.IsGatewayUrl(parse.GetValue(join) ?? ""))
                throw new UsageException("an invite is redeemed at the pool's gateway: pass --join http://GATEWAY:PORT with --token");
            if (parse.GetValue(token) is { } tokenFlag)
            {
                try
                {
                    Potluck.Security.JoinToken.Parse(tokenFlag);
                }
                catch (Potluck.Security.PoolSecurityException e)
                {
                    throw new UsageException(e.Message);
                }
            }
            if (parse.GetValue(join) is { } joinText && PoolJoinClient.IsGatewayUrl(joinText)) ParseGatewayUrl(joinText);
            var layerFlag = parse.GetValue(layers) is { } layerText ? ParseLayers(layerText) : ((int Start, int End)?)null;
            if (parse.GetValue(maxLayers) is < 1) throw new UsageException("--max-layers must be at least 1");
            if (parse.GetValue(memory) is { } memoryText && !NodeCapacity.TryParseSize(memoryText, out _))
                throw new UsageException($"--memory must be a size such as 8G, 512M or 1.5GiB (got '{memoryText}')");
            if (parse.GetValue(threads) < 0) throw new UsageException("--threads must be 0 (all cores) or more");
            var kvBudgetValue = parse.GetValue(kvBudget) is { } kvText
                ? KvBudget.Parse(kvText) ?? throw new UsageException($"--kv-budget must be a token count such as 65536 or a size such as 8GiB or 512MB (got '{kvText}')")
                : ((long? Tokens, long? Bytes)?)null;
            if (parse.GetValue(kvTokens) is < 1) throw new UsageException("--kv-tokens must be at least 1");
            if (parse.GetValue(nodesOnHost) < 1) throw new UsageException("--nodes-on-host must be at least 1");
            if (parse.GetValue(maxRows) < 1) throw new UsageException("--max-rows must be at least 1");
            if (parse.GetValue(drainTimeout) is not (> 0 and <= 86400)) throw new UsageException($"--drain-timeout must be more than 0 and at most 86400 seconds (got {parse.GetValue(drainTimeout)})");
            var period = parse.GetValue(rebalanceEvery);
            if (period is < NodeJoinOptions.MinRebalanceSeconds or > NodeJoinOptions.MaxRebalanceSeconds)
                throw new UsageException($"--rebalance-every must be between {NodeJoinOptions.MinRebalanceSeconds} and {NodeJoinOptions.MaxRebalanceSeconds} seconds (got {period})");
            if (parse.GetValue(port) is { } grpcPort) HostedCommand.ValidatePort(grpcPort, "--port");
            if (parse.GetValue(siloPort) is { } siloPortValue) HostedCommand.ValidatePort(siloPortValue, "--silo-port");

            var flags = new HostedCommand.FlagConfiguration(NodeOptions.ConfigurationSection);
            flags.Set(parse, model, nameof(NodeOptions.ModelPath), file => file?.FullName);
            // The canonical form, so an old A-B flag is warned about once (above), not again by the options binder.
            if (layerFlag is { } span) flags.Set("Layers", LayerRange.Input(span.Start, span.End));
            flags.Set(parse, join, "Join");
            flags.Set(parse, redis, nameof(NodeOptions.RedisConnectionString));
            flags.Set(parse, maxLayers, nameof(NodeJoinOptions.MaxLayers));
            flags.Set(parse, memory, "Memory");
            flags.Set(parse, advertise, nameof(NodeOptions.AdvertisedHost));
            if (HostedCommand.DeprecatedHost(parse, host, advertise, "node", "the address the pool dials this node at") is { } hostValue)
                flags.Set(nameof(NodeOptions.AdvertisedHost), hostValue);
            flags.Set(parse, listen, nameof(NodeOptions.ListenAddress));
            flags.Set(parse, port, nameof(NodeOptions.GrpcPort));
            flags.Set(parse, siloPort, nameof(NodeOptions.SiloPort));
            flags.Set(parse, nodeId, nameof(NodeOptions.NodeId));
            flags.Set(parse, clusterId, nameof(NodeOptions.ClusterId));
            flags.Set(parse, kvTokens, nameof(NodeOptions.KvBudgetTokens));
            if (kvBudgetValue is { Tokens: { } budgetTokens }) flags.Set(nameof(NodeOptions.KvBudgetTokens), budgetTokens.ToString(CultureInfo.InvariantCulture));
            if (kvBudgetValue is { Bytes: { } budgetBytes }) flags.Set(nameof(NodeOptions.KvBudgetBytes), budgetBytes.ToString(CultureInfo.InvariantCulture));
            flags.Set(parse, nodesOnHost, nameof(NodeOptions.NodesOnHost));
            flags.Set(parse, threads, nameof(NodeOptions.Threads));
            flags.Set(parse, maxRows, nameof(NodeOptions.MaxRowsPerStep));
            flags.Set(parse, fastFailure, nameof(NodeOptions.FastFailureDetection));
            flags.Set(parse, drainTimeout, nameof(NodeOptions.DrainTimeout), seconds => seconds.ToString("R", CultureInfo.InvariantCulture));
            flags.Set(parse, rebalance, nameof(NodeJoinOptions.Rebalance));
            flags.Set(parse, rebalanceEvery, "RebalanceEvery");
            if (parse.GetValue(token) is { } tokenText) flags.SetKey($"{Potluck.Hosting.PoolSecuritySettings.ConfigurationSection}:JoinToken", tokenText);
            if (parse.GetValue(tokenFile) is { } file) flags.SetKey($"{Potluck.Hosting.PoolSecuritySettings.ConfigurationSection}:JoinTokenFile", file.FullName);
            var configuration = flags.Build();

            var section = configuration.GetSection(NodeOptions.ConfigurationSection);
            if (string.IsNullOrWhiteSpace(section[nameof(NodeOptions.ModelPath)]))
                throw new UsageException("option '--model' is required (or set Potluck__Node__ModelPath)");
            var joining = NodeJoinOptions.FromConfiguration(configuration);
            var gatewayUrl = joining.GatewayUrl;
            var fixedSpan = NodeOptions.HasLayers(configuration);
            if (!fixedSpan && gatewayUrl is null)
                throw new UsageException("without --layers the node chooses its own span from the pool's gateway: pass --join http://GATEWAY:PORT " +
                    "(with --join HOST:PORT or --redis, pass --layers A:B, e.g. --layers 0:4)");
            if (fixedSpan && (joining.MemoryBudgetBytes is not null || joining.MaxLayers is not null))
                throw new UsageException("--memory and --max-layers size a span the node chooses itself; they do not combine with --layers");
            if (joining.Rebalance && (gatewayUrl is null || fixedSpan))
                throw new UsageException("--rebalance moves a node between spans it chooses itself: pass --join http://GATEWAY:PORT and leave out --layers");
            if (!joining.Rebalance && !string.IsNullOrWhiteSpace(section["RebalanceEvery"]))
                throw new UsageException("--rebalance-every needs --rebalance");
            // Without a span these are placeholders until the join chooses one.
            var options = NodeOptions.FromConfiguration(configuration, layersRequired: false);
            var verbose = parse.GetValue(CliApplication.Verbose);
            if (!joining.Rebalance)
            {
                // Ports first, before the model, the gateway or membership: a taken --port is one line and nothing joined.
                // (Rebalancing leaves free ports to each child.)
                try
                {
                    options = NodePorts.Settle(options, Potluck.Hosting.PotluckSilo.ListenAddressFor(options.AdvertisedHost, options.ListenAddress));
                }
                catch (PortTakenException e)
                {
                    throw new CliFailureException(e.Message);
                }
            }
            string? invite;
            try
            {
                invite = options.Security.ReadJoinToken();
            }
            catch (Potluck.Hosting.ConfigurationUsageException e)
            {
                throw new UsageException(e.Message);
            }

            return await HostedCommand.RunAsync(parse.GetValue(parentPid), "node", async stop =>
            {
                // Read the header first: a missing, corrupt or too-short model is one clear line, not a host crash.
                var info = ModelCommands.InspectRunnableOrFail(options.ModelPath);
                var joiner = new PoolJoiner(Console.Out, Console.Error, ProbeCacheDirectory());
                JoinResult? joined = null;
                if (gatewayUrl is not null)
                {
                    joined = await joiner.JoinByUrlAsync(gatewayUrl, options, info, joining, chooseSpan: !fixedSpan, stop, invite);
                    options = joined.Options;
                }
                if (options.LayerEnd > info.LayerCount)
                    throw new CannotLoadException($"--layers {LayerRange.Input(options.LayerStart, options.LayerEnd)} is outside the model: " +
                        $"{Path.GetFileName(options.ModelPath)} has {info.LayerCount} layers, {LayerRange.Format(0, info.LayerCount)}");
                HostedCommand.ApplyVerbosity(verbose);

                if (joining.Rebalance)
                {
                    // The node runs as a child process (each span its own process), so a move can load the next span while the old one serves.
                    var plan = new RebalancePlan(gatewayUrl!, options, info, joined!.Capacity!, joined.MsPerLayer,
                        options.NodeId, joining.RebalancePeriod, verbose) { PoolUrl = joined.PoolUrl, Credential = joined.Credential };
                    return await RebalancingNode.RunAsync(plan, stop);
                }
                if (joined?.PoolUrl is { } poolUrl && joined.Credential is { } credential) await joiner.AnnounceAsync(poolUrl, credential, options, info, stop);
                return await NodeHost.RunAsync(options, stop);
            });
        });
        return CliApplication.AddExamples(command,
            "potluck node --model ./model.gguf --join http://192.168.1.10:8080 --token plk1_...",
            "potluck node --model ./model.gguf --join http://192.168.1.10:8080",
            "potluck node --model ./model.gguf --join http://192.168.1.10:8080 --memory 6G",
            "potluck node --model ./model.gguf --join http://192.168.1.10:8080 --rebalance",
            "potluck node --model ./model.gguf --layers 0:16 --join 192.168.1.10:11110",
            "potluck node --model ./model.gguf --layers 16:32 --advertise 192.168.1.12 --redis 192.168.1.10:6379",
            "Potluck__Node__ModelPath=./model.gguf Potluck__Node__Layers=0:16 potluck node");
    }

    /// <summary>--layers A:B; the old A-B still works, with a warning that says it means [A, B).</summary>
    internal static (int Start, int End) ParseLayers(string text)
    {
        if (!LayerRange.TryParse(text.Trim(), out var start, out var end, out var legacy))
            throw new UsageException($"--layers must be {LayerRange.Rule} (got '{text}')");
        if (legacy) Console.Error.WriteLine($"potluck node: warning: {LayerRange.LegacyWarning("--layers", text.Trim(), start, end)}");
        return (start, end);
    }

    /// <summary>With POTLUCK_HOME set (tests, self-contained installs) everything potluck keeps stays under it.</summary>
    private static string ProbeCacheDirectory()
    {
        var home = Environment.GetEnvironmentVariable(PotluckPaths.HomeVariable);
        return string.IsNullOrWhiteSpace(home) ? SpeedProbe.DefaultCacheDirectory() : Path.Combine(PotluckPaths.Home, "cache");
    }

    private static Uri ParseGatewayUrl(string text)
    {
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || string.IsNullOrEmpty(uri.Host))
            throw new UsageException($"--join {text} is not a gateway URL such as http://192.168.1.10:8080");
        return uri;
    }
}
