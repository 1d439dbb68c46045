using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Reflection;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;
using Potluck.Cluster;
using Potluck.Cluster.Membership;
using Potluck.Hosting;
using Potluck.Protocol.Diagnostics;
using Potluck.Inference;
using Potluck.Inference.Engine;
using Potluck.Node.Compute;
using Potluck.Node.Control;
using Potluck.Node.Hosting;
using Potluck.Node.Joining;
using Potluck.Node.Telemetry;

namespace Potluck.Node;

/// <summary>
/// One node process: an Orleans silo (control plane) plus a Kestrel gRPC server (data plane) around one
/// loaded layer span.
/// </summary>
public static class NodeHost
{
    /// <summary>Exit code when the model or the span cannot be loaded (also: the file is not the pool's model).</summary>
    public const int ExitCannotLoad = ExitCodes.CannotLoad;

    /// <summary>Exit code when the node cannot join the pool (membership store or seed unreachable).</summary>
    public const int ExitCannotJoin = ExitCodes.CannotJoin;

    /// <summary>
    /// Runs a node until <paramref name="ct"/> fires or the process gets SIGTERM/Ctrl+C. Returns an exit code of
    /// <see cref="ExitCodes"/>: 0 after a clean shutdown; <see cref="ExitCodes.Usage"/> (invalid configuration),
    /// <see cref="ExitCannotLoad"/> or <see cref="ExitCannotJoin"/> after one error line on stderr saying why, so a
    /// supervisor restarting it shows the cause instead of a bare crash loop.
    /// </summary>
    public static async Task<int> RunAsync(NodeOptions options, CancellationToken ct)
    {
        var invalid = new NodeOptionsValidator().Validate(null, options);
        if (invalid.Failed) return Fatal(ExitCodes.Usage, $"invalid configuration: {invalid.FailureMessage}");
        foreach (var warning in options.Warnings) Console.Error.WriteLine($"potluck node: warning: {warning}");
        try
        {
            options = Prepare(options);
        }
        catch (PortTakenException e)
        {
            // Before the silo exists: a second node on a taken port must never reach membership (it would evict the first).
            return Fatal(ExitCodes.Failure, e.Message);
        }
        catch (IOException e)
        {
            return Fatal(ExitCodes.Failure, $"cannot claim a node id: {e.Message}");
        }
        WebApplication app;
        try
        {
            app = Build(options);
        }
        catch (Exception e) when (e is EngineException or IOException or UnauthorizedAccessException)
        {
            return Fatal(ExitCannotLoad, $"cannot load layers {LayerRange.Format(options.LayerStart, options.LayerEnd)} of {options.ModelPath}: {e.Message}");
        }
        catch (Exception e) when (e is NodeConfigurationException or ArgumentException or FormatException)
        {
            return Fatal(ExitCodes.Usage, $"invalid configuration: {e.Message}");
        }
        catch (HostExitException e)
        {
            // No pool credential, or one of another node: says what to do (join with a token).
            return Fatal(e.ExitCode, e.Message);
        }
        await using (app)
        {
            using var startup = CancellationTokenSource.CreateLinkedTokenSource(ct);
            startup.CancelAfter(options.StartupTimeout);
            try
            {
                await app.StartAsync(startup.Token);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                return Fatal(ExitCannotJoin, $"did not join the pool within {options.StartupTimeout.TotalSeconds:F0} s via {DescribeMembership(options)}; is it reachable?");
            }
            catch (Exception e) when (Innermost(e) is ModelMismatchException mismatch)
            {
                // The silo did join: leave the cluster cleanly, so the pool forgets this node at once.
                using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                try { await app.StopAsync(stop.Token); } catch (Exception stopError) when (stopError is OperationCanceledException or AggregateException) { }
                return Fatal(ExitCannotLoad, mismatch.Message);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                return Fatal(ExitCannotJoin, $"cannot join the pool via {DescribeMembership(options)}: {Reason(Innermost(e))}");
            }
            await app.WaitForShutdownAsync(ct);
        }
        return 0;
    }

    /// <summary>
    /// What a node process settles before it loads or joins: its id (claimed, unless given) and its ports (free ones
    /// for 0; a fixed port must be free). Idempotent, so `potluck node` can call it early (it announces the endpoint).
    /// </summary>
    /// <exception cref="PortTakenException">A fixed port is taken.</exception>
    /// <exception cref="IOException">No node id could be claimed.</exception>
    public static NodeOptions Prepare(NodeOptions options)
    {
        if (options.NodeId is null) options = options with { NodeId = NodeIdClaim.Claim(options.Security, options.ClusterId) };
        return NodePorts.Settle(options, PotluckSilo.ListenAddressFor(options.AdvertisedHost, options.ListenAddress));
    }

    private static int Fatal(int code, string message)
    {
        // One line, no stack trace: this is what an operator sees in `docker logs` or `kubectl logs`.
        Console.Error.WriteLine($"potluck node: error: {message.ReplaceLineEndings(" ")}");
        return code;
    }

    private static string DescribeMembership(NodeOptions options) =>
        !string.IsNullOrWhiteSpace(options.RedisConnectionString) ? $"Redis membership at {RedactRedis(options.RedisConnectionString)}"
        : !string.IsNullOrWhiteSpace(options.PrimarySiloEndpoint) ? $"seed silo {options.PrimarySiloEndpoint}"
        : $"development membership (this node is the primary, silo port {options.SiloPort})";

    // Redis connection strings may carry a password: show only the endpoints.
    private static string RedactRedis(string connection) =>
        string.Join(',', connection.Split(',').Where(part => !part.Contains('=', StringComparison.Ordinal)));

    // StackExchange.Redis appends advice meant for developers (abortConnect=false); an operator needs the first sentence.
    private static string Reason(Exception e) =>
        e.GetType().Name == "RedisConnectionException" && e.Message.IndexOf(". ", StringComparison.Ordinal) is > 0 and var end
            ? e.Message[..(end + 1)]
            : e.Message;

    private static Exception Innermost(Exception e)
    {
        while (true)
        {
            if (e is AggregateException { InnerExceptions.Count: 1 } aggregate) e = aggregate.InnerExceptions[0];
            else if (e.InnerException is { } inner && e is AggregateException or TargetInvocationException) e = inner;
            else return e;
        }
    }

    /// <summary>
    /// Loads the span (the expensive part) and builds the node's host without starting it. Tests start
    /// several in one process; they share the model object through <see cref="SharedModel"/>.
    /// </summary>
    /// <param name="configureHost">Runs on the host builder before the node's own services are added (tests add exporters here).</param>
    public static WebApplication Build(NodeOptions options, Action<ILoggingBuilder>? configureLogging = null, Action<WebApplicationBuilder>? configureHost = null)
    {
        var nodeId = options.ResolvedNodeId;
        ShardKeys.ValidateNodeId(nodeId);
        var lease = SharedModel.Acquire(options.ModelPath);
        IStageCompute compute;
        try
        {
            var spanOptions = new SpanOptions { KvBudgetTokens = KvBudget.ResolveTokens(options, lease.Model.Info, options.LayerStart, options.LayerEnd) };
            if (options.Threads > 0) spanOptions = spanOptions with { Threads = options.Threads };
            compute = new LayerSpanCompute(lease, options.LayerStart, options.LayerEnd, spanOptions);
        }
        catch
        {
            lease.Dispose();
            throw;
        }
        try
        {
            return Build(options, compute, configureLogging, configureHost);
        }
        catch
        {
            compute.Dispose();
            throw;
        }
    }

    /// <summary>Builds a node around an already loaded compute (which the host then owns and disposes).</summary>
    internal static WebApplication Build(NodeOptions options, IStageCompute compute, Action<ILoggingBuilder>? configureLogging,
        Action<WebApplicationBuilder>? configureHost = null)
    {
        var nodeId = options.ResolvedNodeId;
        // Before anything else: a node without a pool certificate has nothing to serve with.
        var security = MemberSecurity.ForMember(options.Security, options.ClusterId, nodeId);
        var msPerToken = SpanHost.MeasureDecodeMs(compute);
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions
        {
            Args = [],
            ApplicationName = "Potluck.Node",
            ContentRootPath = AppContext.BaseDirectory,
        });
        // Quiet frameworks, one line per entry, the watchdog's bogus first report dropped (Potluck.Hosting.PotluckLogging).
        builder.AddPotluckLogging();
        configureLogging?.Invoke(builder.Logging);
        configureHost?.Invoke(builder);
        // The drain runs inside the shutdown: the limit covers it plus leaving the cluster.
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = options.ShutdownTimeout);
        builder.Services.AddSingleton(_ => security);
        Membership.NodeMembership.Add(builder.Services, options.Security, options.ReportPeriod);
        builder.AddPotluckTelemetry(new TelemetryIdentity("potluck-node", nodeId, "potluck.node_id"), [NodeTelemetry.Name], [NodeTelemetry.Name]);

        var listen = PotluckSilo.ListenAddressFor(options.AdvertisedHost, options.ListenAddress);
        var maxMessage = StageHosting.MaxMessageBytes(options.MaxRowsPerStep, compute.Width);
        StageHosting.AddStage(builder, listen, options.GrpcPort, maxMessage, security);
        builder.Services.AddSingleton(sp => new SpanHost(compute, nodeId, sp.GetRequiredService<ILogger<SpanHost>>(),
            sp.GetRequiredService<NodeTelemetry>(), options.MaxRowsPerStep) { MeasuredMsPerToken = msPerToken });

        var metadata = new Dictionary<string, string>
        {
            [NodeMetadataKeys.Role] = "node",
            [NodeMetadataKeys.NodeId] = nodeId,
            [NodeMetadataKeys.ModelId] = compute.ModelId,
            [NodeMetadataKeys.Layers] = $"{compute.LayerStart}-{compute.LayerEnd}",
            [NodeMetadataKeys.GrpcEndpoint] = options.GrpcEndpoint,
            [NodeMetadataKeys.KvBudgetTokens] = compute.KvBudgetTokens.ToString(CultureInfo.InvariantCulture),
            [NodeMetadataKeys.MsPerToken] = msPerToken.ToString("F3", CultureInfo.InvariantCulture),
            [NodeMetadataKeys.ProcessId] = Environment.ProcessId.ToString(CultureInfo.InvariantCulture),
        };
        StepTimeline.Start(nodeId);

        builder.UsePotluckSilo(new SiloMembershipSettings(options.ClusterId, SiloMembership.ResolveIPv4(options.AdvertisedHost),
            listen, options.SiloPort, options.GatewayPort, options.RedisConnectionString, options.PrimarySiloEndpoint,
            options.FastFailureDetection), metadata, security);
        builder.Services.AddPotluckHealthChecks();

        builder.Services.AddSingleton(sp =>
        {
            var local = sp.GetRequiredService<ILocalSiloDetails>();
            return new ShardStatusSource(sp.GetRequiredService<SpanHost>(), options.GrpcEndpoint, () => local.SiloAddress.ToParsableString());
        });
        // After the silo, before the reporter: a node whose file differs from the gateway's never reports a shard.
        GatewayModelCheck.Register(builder.Services, options, compute.ModelId);
        // Registered after the silo: starts once the silo is up, stops (withdraws) before it leaves.
        builder.Services.AddSingleton(sp => new ShardReporter(sp.GetRequiredService<IGrainFactory>(),
            sp.GetRequiredService<ShardStatusSource>(), options.ReportPeriod, sp.GetRequiredService<ILogger<ShardReporter>>()));
        builder.Services.AddHostedService(sp => sp.GetRequiredService<ShardReporter>());
        // Drains in StoppingAsync, before any StopAsync: before Kestrel closes streams, the reporter withdraws, the silo leaves.
        builder.Services.AddHostedService(sp => new NodeDrain(sp.GetRequiredService<SpanHost>(), sp.GetRequiredService<ShardReporter>(),
            sp.GetRequiredService<IServer>(), options.DrainTimeout, sp.GetRequiredService<NodeTelemetry>(), sp.GetRequiredService<ILogger<NodeDrain>>()));

        var app = builder.Build();
        Membership.NodeMembership.Use(app);
        StageHosting.MapStage(app);
        // Behind the same mutual TLS as the Stage service (a member certificate is needed); container probes use tcp.
        app.MapPotluckHealthChecks();
        WireLifecycle(app, options, nodeId);
        return app;
    }

    private static void WireLifecycle(WebApplication app, NodeOptions options, string nodeId)
    {
        var lifetime = app.Lifetime;
        var host = app.Services.GetRequiredService<SpanHost>();
        var log = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Potluck.Node");
        lifetime.ApplicationStarted.Register(() =>
        {
            using var process = Process.GetCurrentProcess();
            log.LogInformation(
                "Node {NodeId} serving layers {Layers} of {LayerCount} (model {ModelId}); gRPC {Grpc}; silo {Advertised}:{SiloPort}; " +
                "KV budget {KvTokens} tokens ({KvMiB:F1} MiB); measured {MsPerToken:F2} ms/token; working set {WorkingSetMiB:F0} MiB, managed heap {HeapMiB:F0} MiB",
                nodeId, LayerRange.Format(host.LayerStart, host.LayerEnd), host.LayerCount, host.ModelId, options.GrpcEndpoint, options.AdvertisedHost, options.SiloPort,
                host.KvBudgetTokens, host.KvBudgetTokens * host.KvBytesPerToken / 1048576.0, host.MeasuredMsPerToken,
                process.WorkingSet64 / 1048576.0, GC.GetTotalMemory(false) / 1048576.0);
        });
        // Sessions are not closed here: NodeDrain (a lifecycle service) lets them finish first, then ends the rest.
        lifetime.ApplicationStopping.Register(() =>
            log.LogInformation("Node {NodeId} shutting down: {Sessions} sessions open, draining up to {DrainSeconds:F0} s",
                nodeId, host.OpenSessions, options.DrainTimeout.TotalSeconds));
    }
}
