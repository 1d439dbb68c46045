using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Potluck.Hosting;

namespace Potluck.Node.Membership;

/// <summary>A node's admission services: certificate renewal, the pool's revocation list, closing revoked members' requests.</summary>
public static class NodeMembership
{
    /// <param name="reportPeriod">How often the revocation list is refreshed (the shard report period).</param>
    public static void Add(IServiceCollection services, PoolSecuritySettings settings, TimeSpan reportPeriod)
    {
        services.AddSingleton<RevokedRequestGuard>();
        services.AddHostedService(sp => new CredentialRenewer(sp.GetRequiredService<MemberSecurity>(), settings, sp.GetRequiredService<ILogger<CredentialRenewer>>()));
        services.AddHostedService(sp => new RevocationRefresher(sp.GetRequiredService<MemberSecurity>(), sp.GetRequiredService<IGrainFactory>(), reportPeriod,
            sp.GetRequiredService<IHostApplicationLifetime>(), sp.GetRequiredService<ILogger<RevocationRefresher>>()));
    }

    /// <summary>Before the endpoints: a revoked member's requests are refused and its open ones aborted.</summary>
    public static void Use(WebApplication app)
    {
        var guard = app.Services.GetRequiredService<RevokedRequestGuard>();
        app.Use(guard.InvokeAsync);
    }
}
