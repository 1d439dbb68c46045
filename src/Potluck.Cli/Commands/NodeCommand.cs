using System.CommandLine;
using System.Net;
using Potluck.Cluster.Joining;
using Potluck.Inference.Gguf;
using Potluck.Node;
using Potluck.Node.Joining;

namespace Potluck.Cli.Commands;

/// <summary>`potluck node`: one node process (an Orleans silo plus the Stage gRPC server) holding a span of layers.</summary>
public static class NodeCommand
{
    public static Command Create()
    {
        var defaults = new NodeOptions { ModelPath = "", LayerStart = 0, LayerEnd = 1 };
        var model = new Option<FileInfo>("--model") { Description = "The GGUF file this node serves layers of (every node of a pool holds the same file)", Required = true };
        var layers = new Option<string?>("--layers") { Description = "Layers to load as A-B, meaning [A, B); omit with --join URL to let the node choose" };
        var join = new Option<string?>("--join")
        {
            Description = "The pool to join: the gateway's URL (http://HOST:PORT; the node checks the model and can choose its span), " +
                "or a seed silo HOST:PORT (the gateway's or the first node's silo endpoint); omit to be the primary silo",
        };
        var redis = new Option<string?>("--redis") { Description = "Use Redis membership at HOST:PORT instead of a seed" };
        var token = new Option<string?>("--token") { Description = "Pool join token (for community pools; not supported yet)" };
        var maxLayers = new Option<int?>("--max-layers") { Description = "Most layers to hold when choosing a span (no --layers)" };
        var memory = new Option<string?>("--memory") { Description = "Memory for weights and KV when choosing a span, e.g. 6G or 512M (default: what the machine has free)" };
        var host = new Option<string>("--host")
        {
            Description = "Host or IP the rest of the pool uses to reach this node (with --join URL to another machine: the address that reaches it)",
            DefaultValueFactory = _ => defaults.AdvertisedHost,
        };
        var listen = new Option<string?>("--listen") { Description = "Address to bind (default: loopback when --host is loopback, else all interfaces)" };
        var port = new Option<int>("--port") { Description = "gRPC port for hidden states", DefaultValueFactory = _ => defaults.GrpcPort };
        var siloPort = new Option<int>("--silo-port") { Description = "Orleans silo-to-silo port; every pool member must reach it", DefaultValueFactory = _ => defaults.SiloPort };
        var nodeId = new Option<string?>("--node-id") { Description = "Unique node name in the pool (default: node-HOST-PORT)" };
        var clusterId = new Option<string>("--cluster-id") { Description = "Pool name shared by the gateway and its nodes (with --join URL: the pool's)", DefaultValueFactory = _ => defaults.ClusterId };
        var kvTokens = new Option<long?>("--kv-tokens") { Description = "KV cache budget in tokens over all sessions (default: 4 full contexts)" };
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
            Description = $"Seconds between rebalance checks ({RebalancingNode.MinPeriodSeconds}-{RebalancingNode.MaxPeriodSeconds})",
            DefaultValueFactory = _ => RebalancingNode.DefaultPeriodSeconds,
        };
        var parentPid = HostedCommand.ParentPidOption();
        var command = new Command("node", "Run one node: load a span of the model's layers and serve it to the pool")
        {
            model, layers, join, redis, token, maxLayers, memory, host, listen, port, siloPort, nodeId, clusterId, kvTokens, threads, maxRows, fastFailure,
            drainTimeout, rebalance, rebalanceEvery, parentPid,
        };
        command.SetAction(async (parse, ct) =>
        {
            if (parse.GetValue(token) is not null)
                throw new UsageException("--token is not supported yet: nodes join by --join URL, --join HOST:PORT or --redis on a trusted network");
            var joinText = parse.GetValue(join);
            var gatewayUrl = joinText is not null && PoolJoinClient.IsGatewayUrl(joinText) ? ParseGatewayUrl(joinText) : null;
            var layerText = parse.GetValue(layers);
            if (layerText is null && gatewayUrl is null)
                throw new UsageException("without --layers the node chooses its own span from the pool's gateway: pass --join http://GATEWAY:PORT " +
                    "(with --join HOST:PORT or --redis, pass --layers A-B)");
            (int Start, int End)? fixedLayers = layerText is null ? null : HostedCommand.ParseLayers(layerText);
            if (parse.GetValue(maxLayers) is < 1) throw new UsageException("--max-layers must be at least 1");
            long? memoryBudget = null;
            if (parse.GetValue(memory) is { } memoryText)
            {
                if (!NodeCapacity.TryParseSize(memoryText, out var bytes))
                    throw new UsageException($"--memory must be a size such as 8G, 512M or 1.5GiB (got '{memoryText}')");
                memoryBudget = bytes;
            }
            if (fixedLayers is not null && (memoryBudget is not null || parse.GetValue(maxLayers) is not null))
                throw new UsageException("--memory and --max-layers size a span the node chooses itself; they do not combine with --layers");
            if (parse.GetValue(threads) < 0) throw new UsageException("--threads must be 0 (all cores) or more");
            if (parse.GetValue(maxRows) < 1) throw new UsageException("--max-rows must be at least 1");
            if (parse.GetValue(drainTimeout) is not (> 0 and <= 86400)) throw new UsageException($"--drain-timeout must be more than 0 and at most 86400 seconds (got {parse.GetValue(drainTimeout)})");
            var rebalancing = parse.GetValue(rebalance);
            if (rebalancing && (gatewayUrl is null || fixedLayers is not null))
                throw new UsageException("--rebalance moves a node between spans it chooses itself: pass --join http://GATEWAY:PORT and leave out --layers");
            var period = parse.GetValue(rebalanceEvery);
            if (period is < RebalancingNode.MinPeriodSeconds or > RebalancingNode.MaxPeriodSeconds)
                throw new UsageException($"--rebalance-every must be between {RebalancingNode.MinPeriodSeconds} and {RebalancingNode.MaxPeriodSeconds} seconds (got {period})");
            if (!rebalancing && parse.GetResult(rebalanceEvery) is { Implicit: false })
                throw new UsageException("--rebalance-every needs --rebalance");
            var options = new NodeOptions
            {
                ModelPath = parse.GetRequiredValue(model).FullName,
                // Without --layers these are placeholders until the span is chosen.
                LayerStart = fixedLayers?.Start ?? 0,
                LayerEnd = fixedLayers?.End ?? 1,
                NodeId = parse.GetValue(nodeId),
                GrpcPort = HostedCommand.ValidatePort(parse.GetValue(port), "--port"),
                SiloPort = HostedCommand.ValidatePort(parse.GetValue(siloPort), "--silo-port"),
                PrimarySiloEndpoint = gatewayUrl is null ? joinText : null,
                RedisConnectionString = parse.GetValue(redis),
                AdvertisedHost = parse.GetRequiredValue(host),
                ListenAddress = parse.GetValue(listen),
                KvBudgetTokens = parse.GetValue(kvTokens),
                Threads = parse.GetValue(threads),
                MaxRowsPerStep = parse.GetValue(maxRows),
                ClusterId = parse.GetRequiredValue(clusterId),
                FastFailureDetection = parse.GetValue(fastFailure),
                DrainTimeout = TimeSpan.FromSeconds(parse.GetValue(drainTimeout)),
            };

            // Read the header first: a missing, corrupt or too-short model is one clear line, not a host crash.
            var info = ModelCommands.InspectOrFail(options.ModelPath);
            JoinResult? joined = null;
            if (gatewayUrl is not null)
            {
                var explicitly = new ExplicitOptions(
                    ClusterId: parse.GetResult(clusterId) is { Implicit: false },
                    Host: parse.GetResult(host) is { Implicit: false });
                joined = await JoinByUrlAsync(gatewayUrl, options, info, explicitly, chooseSpan: fixedLayers is null, memoryBudget, parse.GetValue(maxLayers), ct);
                options = joined.Options;
            }
            if (options.LayerEnd > info.LayerCount)
                throw new CliFailureException($"--layers {options.LayerStart}-{options.LayerEnd} is outside the model: {Path.GetFileName(options.ModelPath)} has {info.LayerCount} layers (0-{info.LayerCount})");
            var verbose = parse.GetValue(CliApplication.Verbose);
            HostedCommand.ApplyVerbosity(verbose);

            if (rebalancing)
            {
                // The node runs as a child process (each span its own process), so a move can load the next span while the old one serves.
                var plan = new RebalancingNode.Plan(gatewayUrl!, options, info, joined!.Capacity!, joined.MsPerLayer, parse.GetValue(nodeId),
                    TimeSpan.FromSeconds(period), verbose);
                return await HostedCommand.RunAsync(parse.GetValue(parentPid), "node", stop => RebalancingNode.RunAsync(plan, stop));
            }
            if (gatewayUrl is not null) await AnnounceAsync(gatewayUrl, options, info, ct);
            return await HostedCommand.RunAsync(parse.GetValue(parentPid), "node", stop => NodeHost.RunAsync(options, stop));
        });
        return CliApplication.AddExamples(command,
            "potluck node --model ./model.gguf --join http://192.168.1.10:8080",
            "potluck node --model ./model.gguf --join http://192.168.1.10:8080 --memory 6G",
            "potluck node --model ./model.gguf --join http://192.168.1.10:8080 --rebalance",
            "potluck node --model ./model.gguf --layers 0-16 --join 192.168.1.10:11110",
            "potluck node --model ./model.gguf --layers 16-32 --host 192.168.1.12 --redis 192.168.1.10:6379");
    }

    private sealed record ExplicitOptions(bool ClusterId, bool Host);

    /// <summary>What joining by URL settled: the options to run with and, when the node chose its span, its capacity and probed speed.</summary>
    private sealed record JoinResult(NodeOptions Options, NodeCapacity? Capacity, double? MsPerLayer);

    /// <summary>
    /// Tells the gateway which span this node is about to load, so /api/pool shows it joining and another node choosing
    /// meanwhile counts the span as taken. Best effort: an older or busy gateway only costs that hint.
    /// </summary>
    internal static async Task AnnounceAsync(Uri gateway, NodeOptions options, ModelInfo info, CancellationToken ct)
    {
        var announcement = new JoinAnnouncement(options.ResolvedNodeId, info.ModelId, options.LayerStart, options.LayerEnd, options.GrpcEndpoint);
        try
        {
            var accepted = await PoolJoinClient.AnnounceAsync(gateway, announcement, TimeSpan.FromSeconds(5), ct);
            Console.Out.WriteLine($"potluck node: announced to the gateway as joining with layers {options.LayerStart}-{options.LayerEnd} " +
                $"(listed as {accepted.State} until it serves, at most until {accepted.ExpiresAt:HH:mm:ss} UTC)");
        }
        catch (PoolJoinException e)
        {
            Console.Error.WriteLine($"potluck node: warning: could not announce this node as joining ({e.Message}); loading anyway");
        }
    }

    private static Uri ParseGatewayUrl(string text)
    {
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || string.IsNullOrEmpty(uri.Host))
            throw new UsageException($"--join {text} is not a gateway URL such as http://192.168.1.10:8080");
        return uri;
    }

    /// <summary>
    /// Asks the gateway which pool this is, refuses a different model file, takes the pool's membership and cluster
    /// id, and (without --layers) chooses the span: the options NodeHost then runs with.
    /// </summary>
    private static async Task<JoinResult> JoinByUrlAsync(Uri gateway, NodeOptions options, ModelInfo info, ExplicitOptions explicitly,
        bool chooseSpan, long? memoryBudget, int? maxLayers, CancellationToken ct)
    {
        PoolJoinInfo pool;
        try
        {
            pool = await PoolJoinClient.FetchAsync(gateway, PoolJoinClient.DefaultTimeout, ct);
        }
        catch (PoolJoinException e)
        {
            throw new CliFailureException(e.Message, e);
        }

        var gatewayIsLocal = IsLoopback(gateway.Host);
        if (!explicitly.Host && !gatewayIsLocal && PoolJoinClient.LocalAddressToward(gateway.Host) is { } local && !IPAddress.IsLoopback(local))
        {
            // The pool must dial this node back: advertise the address that routes to the gateway, not loopback.
            options = options with { AdvertisedHost = local.ToString() };
        }
        if (pool.Model.Id != info.ModelId)
            throw new CliFailureException(GatewayModelCheck.MismatchMessage(options.ResolvedNodeId, info.ModelId, options.ModelPath,
                GatewayModelCheck.Describe(pool.Model.Id, pool.Model.Name)));

        if (explicitly.ClusterId && options.ClusterId != pool.ClusterId)
            throw new CliFailureException($"--cluster-id {options.ClusterId} differs from the pool's cluster id {pool.ClusterId} at {gateway}; leave it out to use the pool's");
        options = options with { ClusterId = pool.ClusterId };
        if (pool.Membership.Kind == JoinMembership.Redis)
        {
            if (string.IsNullOrWhiteSpace(options.RedisConnectionString))
                throw new CliFailureException($"the pool at {gateway} uses Redis membership: pass --redis HOST:PORT (the Redis its gateway uses) as well");
        }
        else
        {
            if (!string.IsNullOrWhiteSpace(options.RedisConnectionString))
                throw new CliFailureException($"the pool at {gateway} uses a seed silo ({pool.Membership.Seed}), not Redis: leave out --redis");
            var seed = pool.Membership.Seed!;
            var colon = seed.LastIndexOf(':');
            if (!gatewayIsLocal && colon > 0 && IsLoopback(seed[..colon]))
                throw new CliFailureException($"the gateway at {gateway} advertises its silo at {seed}, a loopback address other machines cannot reach; " +
                    "start the gateway with --host 0.0.0.0 --advertise <its LAN address>");
            options = options with { PrimarySiloEndpoint = seed };
        }

        Console.Out.WriteLine($"potluck node: joining the pool at {gateway}: {pool.Model.Name} ({pool.Model.Layers} layers, model {pool.Model.Id[..Math.Min(12, pool.Model.Id.Length)]}), " +
            $"{pool.Spans.Count} span(s) held now; membership {(pool.Membership.Kind == JoinMembership.Redis ? "Redis" : "seed " + pool.Membership.Seed)}; this node is {options.AdvertisedHost}");
        if (!chooseSpan) return new JoinResult(options, null, null);

        var kvTokens = options.KvBudgetTokens ?? 4L * info.ContextLength;
        var budget = memoryBudget ?? NodeCapacity.DetectBudgetBytes();
        var capacity = new NodeCapacity(NodeCapacity.EstimateLayerBytes(info, kvTokens), budget, maxLayers);
        var msPerLayer = ProbeSpeed(options, info);
        SpanChoice choice;
        try
        {
            choice = SpanChooser.Choose(info.LayerCount, pool.Spans, capacity, options.ResolvedNodeId, msPerLayer);
        }
        catch (SpanChoiceException e)
        {
            throw new CliFailureException(e.Message, e);
        }
        Console.Out.WriteLine($"potluck node: chose layers {choice.Start}-{choice.End} ([{choice.Start},{choice.End}) of {info.LayerCount}): {choice.Reason}; " +
            $"needs {SpanChooserFormat(capacity.BytesOf(choice.Start, choice.End))} of {SpanChooserFormat(budget)} " +
            $"{(memoryBudget is null ? "free" : "(--memory)")}, KV for {kvTokens} tokens included");
        return new JoinResult(options with { LayerStart = choice.Start, LayerEnd = choice.End }, capacity, msPerLayer);
    }

    /// <summary>
    /// This machine's decode time for one block of the model: cached per model and machine, else measured now
    /// (a one-layer span of the real file). Null when the probe cannot run; the choice then assumes a speed.
    /// </summary>
    private static double? ProbeSpeed(NodeOptions options, ModelInfo info)
    {
        // With POTLUCK_HOME set (tests, self-contained installs) everything potluck keeps stays under it.
        var home = Environment.GetEnvironmentVariable(PotluckPaths.HomeVariable);
        var cacheDirectory = string.IsNullOrWhiteSpace(home) ? SpeedProbe.DefaultCacheDirectory() : Path.Combine(PotluckPaths.Home, "cache");
        try
        {
            var probe = SpeedProbe.MeasureOrReuse(options.ModelPath, info.ModelId, options.Threads, cacheDirectory);
            var threads = SpeedProbe.ThisMachine(options.Threads).Threads;
            Console.Out.WriteLine(probe.FromCache
                ? $"potluck node: speed probe: reused {probe.MsPerLayer:F3} ms per layer for this model on this machine ({threads} threads, measured {probe.MeasuredAtUtc:yyyy-MM-dd HH:mm} UTC; {probe.CachePath})"
                : $"potluck node: speed probe: measured {probe.MsPerLayer:F3} ms per layer (one block, median of {SpeedProbe.Repeats} decode steps, {threads} threads) in {probe.Elapsed.TotalSeconds:F2} s; cached in {probe.CachePath}");
            return probe.MsPerLayer;
        }
        catch (Exception e) when (e is Potluck.Inference.EngineException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"potluck node: warning: speed probe failed ({e.Message}); choosing with an assumed speed");
            return null;
        }
    }

    private static string SpanChooserFormat(long bytes) => ModelCommands.FormatBytes(bytes);

    private static bool IsLoopback(string host) =>
        host is "localhost" || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));
}
