using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Orleans.Runtime;

namespace Potluck.Hosting;

/// <summary>Healthy while this host's silo is an active member of the pool; joining, leaving or dead is unhealthy.</summary>
public sealed class SiloHealthCheck(ILocalSiloDetails local, IClusterMembershipService membership) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var status = membership.CurrentSnapshot.GetSiloStatus(local.SiloAddress);
        return Task.FromResult(status == SiloStatus.Active
            ? HealthCheckResult.Healthy($"silo {local.SiloAddress} is active")
            : HealthCheckResult.Unhealthy($"silo {local.SiloAddress} is {status}"));
    }
}

public static class PotluckHealth
{
    /// <summary>The name of the silo check (GET /healthz on a node answers with it).</summary>
    public const string Silo = "silo";

    /// <summary>Registers the checks every Potluck host has: its silo's membership.</summary>
    public static IHealthChecksBuilder AddPotluckHealthChecks(this IServiceCollection services) =>
        services.AddHealthChecks().AddCheck<SiloHealthCheck>(Silo);

    /// <summary>GET /healthz: 200 "Healthy" while every check passes, else 503.</summary>
    public static IEndpointConventionBuilder MapPotluckHealthChecks(this IEndpointRouteBuilder endpoints, string path = "/healthz") =>
        endpoints.MapHealthChecks(path);
}
