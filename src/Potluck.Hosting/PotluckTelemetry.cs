using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Logs;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Potluck.Hosting;

/// <summary>Who is exporting: the OpenTelemetry service name and this process's instance (node id or gateway id).</summary>
/// <param name="ServiceName">potluck-node or potluck-gateway; OTEL_SERVICE_NAME overrides it.</param>
/// <param name="InstanceId">service.instance.id, also exported as <paramref name="InstanceAttribute"/> when given.</param>
public sealed record TelemetryIdentity(string ServiceName, string InstanceId, string? InstanceAttribute = null);

/// <summary>
/// The one OpenTelemetry setup of every Potluck host: traces, metrics and logs, exported over OTLP when the
/// standard OTEL_EXPORTER_OTLP_ENDPOINT is configured (environment or any configuration source). The exporter then
/// reads the other OTEL_* settings (protocol, headers, intervals) itself.
/// </summary>
public static class PotluckTelemetry
{
    /// <summary>Orleans' own activity sources; every Potluck silo exports them next to its Potluck.* source.</summary>
    public static readonly string[] OrleansSources = ["Microsoft.Orleans.Runtime", "Microsoft.Orleans.Application"];

    /// <summary>Orleans' meter.</summary>
    public const string OrleansMeter = "Microsoft.Orleans";

    public const string OtlpEndpointKey = "OTEL_EXPORTER_OTLP_ENDPOINT";

    /// <summary>True when an OTLP collector is configured.</summary>
    public static bool OtlpConfigured(IConfiguration configuration) => !string.IsNullOrWhiteSpace(configuration[OtlpEndpointKey]);

    /// <param name="sources">ActivitySources to trace (the host's Potluck.* source; Orleans' are added).</param>
    /// <param name="meters">Meters to collect (the host's Potluck.* meter; Orleans' is added).</param>
    /// <param name="configureMetrics">Host extras, e.g. the gateway's ASP.NET Core instrumentation and Prometheus exporter.</param>
    /// <param name="configureTracing">Host extras, e.g. the gateway's ASP.NET Core instrumentation.</param>
    public static IOpenTelemetryBuilder AddPotluckTelemetry(this WebApplicationBuilder builder, TelemetryIdentity identity,
        IEnumerable<string> sources, IEnumerable<string> meters,
        Action<MeterProviderBuilder>? configureMetrics = null, Action<TracerProviderBuilder>? configureTracing = null)
    {
        var allSources = sources.Concat(OrleansSources).Distinct().ToArray();
        var allMeters = meters.Append(OrleansMeter).Distinct().ToArray();
        var telemetry = builder.Services.AddOpenTelemetry()
            .ConfigureResource(resource =>
            {
                // OTEL_SERVICE_NAME wins when the operator set it.
                if (string.IsNullOrWhiteSpace(builder.Configuration["OTEL_SERVICE_NAME"]))
                    resource.AddService(identity.ServiceName, serviceInstanceId: identity.InstanceId);
                if (identity.InstanceAttribute is { } attribute)
                    resource.AddAttributes([new KeyValuePair<string, object>(attribute, identity.InstanceId)]);
            })
            .WithTracing(tracing =>
            {
                tracing.AddSource(allSources);
                configureTracing?.Invoke(tracing);
            })
            .WithMetrics(metrics =>
            {
                metrics.AddMeter(allMeters);
                configureMetrics?.Invoke(metrics);
            });
        if (OtlpConfigured(builder.Configuration))
        {
            // Logs join the pipeline only when they have somewhere to go: the console logger stays the only cost otherwise.
            telemetry.WithLogging(_ => { }, options =>
            {
                options.IncludeFormattedMessage = true;
                options.IncludeScopes = true;
            });
            // One exporter for all three signals (traces, metrics, logs).
            telemetry.UseOtlpExporter();
        }
        return telemetry;
    }
}
