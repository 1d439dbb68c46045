using System.Globalization;
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;
using Potluck.Cluster;
using Potluck.Cluster.Membership;
using Potluck.Hosting;
using Potluck.Protocol;
using Potluck.Protocol.Diagnostics;
using Potluck.Gateway.Access;
using Potluck.Gateway.Api;
using Potluck.Gateway.Streaming;
using Potluck.Gateway.Head;
using Potluck.Gateway.Ops;
using Potluck.Gateway.Pool;
using Potluck.Gateway.Routing;
using Potluck.Gateway.Sessions;
using Potluck.Gateway.Telemetry;
using Potluck.Inference;

namespace Potluck.Gateway;

/// <summary>
/// The gateway process: an ASP.NET Core app serving the OpenAI API, and an Orleans silo that holds no shards
/// (session grains live here; the pool directory is reachable from here).
/// </summary>
public static class GatewayHost
{
    /// <summary>
    /// Runs the gateway until <paramref name="ct"/> fires or the process gets SIGTERM/Ctrl+C. Returns an exit code of
    /// <see cref="ExitCodes"/>: 0 after a clean shutdown, <see cref="ExitCodes.Usage"/> for invalid options,
    /// <see cref="ExitCodes.CannotLoad"/> when the head cannot be loaded, <see cref="ExitCodes.CannotJoin"/> when the
    /// silo cannot join the pool; each after one error line on stderr.
    /// </summary>
    public static async Task<int> RunAsync(GatewayOptions options, CancellationToken ct)
    {
        GatewayApp app;
        try
        {
            app = Build(options);
        }
        catch (Exception e) when (e is EngineException or FileNotFoundException or IOException or UnauthorizedAccessException)
        {
            return Fatal(ExitCodes.CannotLoad, $"cannot load the head of {options.ModelPath}: {e.Message}");
        }
        catch (Exception e) when (e is ConfigurationUsageException or ArgumentException or FormatException)
        {
            return Fatal(ExitCodes.Usage, $"invalid configuration: {e.Message}");
        }
        await using (app)
        {
            try
            {
                await app.StartAsync(ct);
            }
            catch (IOException e)
            {
                // Kestrel could not bind the API's port: a runtime failure, not the pool's.
                return Fatal(ExitCodes.Failure, OneLine(e));
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                return Fatal(ExitCodes.CannotJoin, $"cannot join the pool: {OneLine(e)}");
            }
            await app.App.WaitForShutdownAsync(ct);
        }
        return ExitCodes.Ok;
    }

    private static int Fatal(int code, string message)
    {
        // One line, no stack trace: what an operator sees in `docker logs` or `kubectl logs`.
        Console.Error.WriteLine($"potluck gateway: error: {message.ReplaceLineEndings(" ")}");
        return code;
    }

    private static string OneLine(Exception e)
    {
        while (e is AggregateException { InnerExceptions.Count: 1 } aggregate) e = aggregate.InnerExceptions[0];
        return e.Message;
    }

    /// <summary>Loads the head and builds the gateway without starting it (tests start it on port 0).</summary>
    public static GatewayApp Build(GatewayOptions options, Action<ILoggingBuilder>? configureLogging = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ShardKeys.ValidateNodeId(options.GatewayId);
        var invalid = new GatewayOptionsValidator().Validate(null, options);
        if (invalid.Failed) throw new ArgumentException(invalid.FailureMessage);
        // Keys, certificate and the start rules before the model: a refused start costs nothing.
        var access = GatewayAccess.Resolve(options);
        var model = new ModelFrontEnd(options.ModelPath, options.Threads, options.ModelName);
        try
        {
            return new GatewayApp(BuildApp(options, access, model, configureLogging));
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    private static WebApplication BuildApp(GatewayOptions options, GatewayAccess access, ModelFrontEnd model, Action<ILoggingBuilder>? configureLogging)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions
        {
            Args = [],
            ApplicationName = "Potluck.Gateway",
            ContentRootPath = AppContext.BaseDirectory,
        });
        // Quiet frameworks, one line per entry, the watchdog's bogus first report dropped (Potluck.Hosting.PotluckLogging).
        builder.AddPotluckLogging();
        configureLogging?.Invoke(builder.Logging);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(20));
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(access.ListenAddress, options.Port, listen => listen.UseApiHttps(access));
            kestrel.Limits.MaxRequestBodySize = DrainLimit(options);
            kestrel.AddServerHeader = false;
        });

        builder.Services.AddSingleton(options);
        builder.Services.AddPotluckAccess(access);
        builder.Services.AddSingleton(model);
        // The pool CA lives with the gateway: it issues members' certificates and signs route tickets.
        var security = MemberSecurity.ForAuthority(options.Security, options.ClusterId, options.GatewayId);
        builder.Services.AddSingleton(_ => security);
        // Admission: the pool endpoint (its own HTTPS listener: enrol, renew, the members' join document, announce),
        // revocation publishing and the gateway's own renewal.
        var poolListener = new PoolListener(security);
        builder.Services.AddSingleton(poolListener);
        // Member-facing like the silo, so it binds where the silo does (a LAN pool may keep its API on loopback).
        builder.WebHost.ConfigureKestrel(kestrel => poolListener.Listen(kestrel, SiloListenAddress(options), options.ResolvedPoolPort));
        builder.Services.AddHostedService<GatewayCredentialRenewer>();
        builder.Services.AddSingleton<GatewayTelemetry>();
        // One mutual-TLS channel per first-stage node; hidden states of a full prefill chunk can be several MiB.
        builder.Services.AddSingleton(sp => new MemberChannels(security.Credential, security.Trust, 256 * 1024 * 1024,
            log: sp.GetRequiredService<ILoggerFactory>().CreateLogger<MemberChannels>()));
        builder.Services.AddSingleton<RunningSessions>();
        builder.Services.AddSingleton<GenerationService>();
        builder.Services.AddSingleton<PoolMonitor>();

        var metadata = new Dictionary<string, string>
        {
            [NodeMetadataKeys.Role] = "gateway",
            [NodeMetadataKeys.NodeId] = options.GatewayId,
            [NodeMetadataKeys.ModelId] = model.ModelId,
            [NodeMetadataKeys.ModelName] = model.Name,
            [NodeMetadataKeys.ProcessId] = Environment.ProcessId.ToString(CultureInfo.InvariantCulture),
        };
        StepTimeline.Start("gateway");
        builder.UsePotluckSilo(MembershipOf(options), metadata, security);
        builder.Services.AddPotluckHealthChecks();
        // After the silo: the monitor needs the cluster to read the pool directory.
        builder.Services.AddHostedService(sp => sp.GetRequiredService<PoolMonitor>());
        builder.Services.AddHostedService<RevocationPublisher>();
        // The dashboard's history: the gateway's metrics and the pool's events, sampled once a second.
        builder.Services.AddSingleton<RecentStats>();
        builder.Services.AddSingleton<PoolEvents>();
        builder.Services.AddHostedService<DashboardSampler>();

        // Traces, metrics and logs; OTLP for all three when OTEL_EXPORTER_OTLP_ENDPOINT is set, Prometheus on /metrics always.
        builder.AddPotluckTelemetry(new TelemetryIdentity("potluck-gateway", options.GatewayId), [GatewayTelemetry.Name], [GatewayTelemetry.Name],
            configureMetrics: metrics => metrics.AddAspNetCoreInstrumentation().AddPrometheusExporter(),
            configureTracing: tracing => tracing.AddAspNetCoreInstrumentation());

        var app = builder.Build();
        app.Use(CatchAllAsync);
        // Requests on the pool port are answered by the pool endpoint alone (no API keys, no other route there).
        app.Use(PoolEndpoint.MiddlewareAsync);
        app.UseStatusCodePages(async context =>
        {
            var http = context.HttpContext;
            var status = http.Response.StatusCode;
            var message = status switch
            {
                404 => $"Unknown path {http.Request.Path}; the API lives under /v1 (see GET /v1/models).",
                405 => $"Method {http.Request.Method} is not allowed on {http.Request.Path}.",
                413 => $"The request body exceeds the gateway's limit of {options.MaxBodyBytes} bytes.",
                _ => $"The request failed with HTTP {status}.",
            };
            await new ApiError(status, message, ApiError.InvalidRequest, null, status switch { 404 => "unknown_url", 405 => "method_not_allowed", 413 => "request_too_large", _ => null })
                .WriteAsync(http);
        });
        // Host filtering (first, from WebApplication), routing, CORS, authentication, JSON content type, rate limits, authorization.
        app.UsePotluckAccess(access);
        OpenAiEndpoints.Map(app);
        Api.Anthropic.AnthropicEndpoints.Map(app);
        OpsEndpoints.Map(app);
        app.MapPrometheusScrapingEndpoint("/metrics").RequireAuthorization(AccessPolicies.Metrics);
        WireLifecycle(app, options, model);
        return app;
    }

    /// <summary>Maps anything unexpected to an OpenAI-shaped error instead of a crash or an empty 500.</summary>
    private static async Task CatchAllAsync(HttpContext context, RequestDelegate next)
    {
        try
        {
            await next(context);
        }
        catch (BadHttpRequestException e)
        {
            await new ApiError(e.StatusCode, $"Bad request: {e.Message}", ApiError.InvalidRequest, null,
                e.StatusCode == 413 ? "request_too_large" : "bad_request").WriteAsync(context);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // The client went away; its generation was cancelled and its KV freed.
        }
        catch (Exception e)
        {
            var log = context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("Potluck.Gateway");
            log.LogError(e, "Unhandled error serving {Method} {Path}", context.Request.Method, context.Request.Path);
            await new ApiError(500, $"Internal error: {e.GetType().Name}. The gateway logged the details.", ApiError.ServerError, null, "internal_error")
                .WriteAsync(context);
        }
    }

    /// <summary>Bodies up to this size are read to the end even when over the limit, so the 413 arrives cleanly.</summary>
    internal static long DrainLimit(GatewayOptions options) => Math.Max(options.MaxBodyBytes * 4, options.MaxBodyBytes + 1024 * 1024);

    /// <summary>
    /// The silo binds <see cref="GatewayOptions.SiloListenAddress"/>, else the API's <see cref="GatewayOptions.ListenAddress"/>
    /// (loopback by default), never all interfaces just because it advertises a LAN address.
    /// </summary>
    internal static IPAddress SiloListenAddress(GatewayOptions options)
    {
        var advertised = SiloMembership.ResolveIPv4(options.AdvertisedHost);
        var listen = SiloMembership.ResolveIPv4(options.SiloListenAddress ?? options.ListenAddress);
        return PotluckSilo.ListenAddressFor(advertised.ToString(), listen.ToString());
    }

    private static SiloMembershipSettings MembershipOf(GatewayOptions options)
    {
        var advertised = SiloMembership.ResolveIPv4(options.AdvertisedHost);
        var listen = SiloListenAddress(options);
        return new SiloMembershipSettings(options.ClusterId, advertised, listen, options.SiloPort,
            options.GatewayPort, options.RedisConnectionString, options.PrimarySiloEndpoint, options.FastFailureDetection);
    }

    private static void WireLifecycle(WebApplication app, GatewayOptions options, ModelFrontEnd model)
    {
        var log = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Potluck.Gateway");
        app.Lifetime.ApplicationStarted.Register(() =>
        {
            var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses;
            var silo = SiloListenAddress(options);
            log.LogInformation("Gateway serving {Model} ({Layers} layers, context {Context}) at {Addresses}; silo on {SiloListen}:{SiloPort} advertised as {Advertised}; wire {Wire}",
                model.Name, model.LayerCount, model.ContextLength, string.Join(", ", addresses ?? []), silo, options.SiloPort, options.AdvertisedHost, options.WireType);
            if (IPAddress.IsLoopback(silo) && IPAddress.TryParse(options.AdvertisedHost, out var advertised) && !IPAddress.IsLoopback(advertised))
                log.LogWarning("The silo listens on {SiloListen} but advertises {Advertised}: nodes on other machines cannot reach it; pass --silo-listen 0.0.0.0 (or that address)",
                    silo, options.AdvertisedHost);
        });
        app.Lifetime.ApplicationStopped.Register(model.Dispose);
    }
}

/// <summary>A built gateway: start it, read its address, stop it.</summary>
public sealed class GatewayApp(WebApplication app) : IAsyncDisposable
{
    public WebApplication App { get; } = app;
    public IServiceProvider Services => App.Services;

    /// <summary>http://host:port/ the API listens on (after start).</summary>
    public Uri BaseAddress
    {
        get
        {
            var addresses = App.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses;
            var first = addresses?.FirstOrDefault() ?? throw new InvalidOperationException("the gateway has not started");
            return new Uri(first.EndsWith('/') ? first : first + "/");
        }
    }

    public PoolMonitor Pool => App.Services.GetRequiredService<PoolMonitor>();

    private bool _started;

    public async Task StartAsync(CancellationToken ct)
    {
        await App.StartAsync(ct);
        _started = true;
    }

    public async Task StopAsync(CancellationToken ct)
    {
        try
        {
            await App.StopAsync(ct);
        }
        catch (OperationCanceledException)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            await StopAsync(timeout.Token);
        }
        catch (InvalidOperationException) when (!_started)
        {
            // A start that failed (a port in use) leaves a silo Orleans refuses to stop; its one error line is already out.
        }
        await App.DisposeAsync();
    }
}
