using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Potluck.Contracts.Joining;
using Potluck.Gateway.Head;
using Potluck.Gateway.Routing;

namespace Potluck.Gateway.Ops;

/// <summary>
/// GET /api/join: what `potluck node --join http://gateway:8080` needs: the pool's model id (a node with another
/// file refuses), how to reach membership, and who holds which layers with what load (to choose a span).
/// </summary>
public static class JoinEndpoint
{
    /// <summary>How long a request waits for the gateway's first pool view, so a fresh gateway does not report an empty pool.</summary>
    private static readonly TimeSpan FirstViewWait = TimeSpan.FromSeconds(3);

    public static async Task HandleAsync(HttpContext context)
    {
        var services = context.RequestServices;
        var monitor = services.GetRequiredService<PoolMonitor>();
        await monitor.WaitForFirstRefreshAsync(FirstViewWait, context.RequestAborted);
        var info = Describe(services.GetRequiredService<GatewayOptions>(), services.GetRequiredService<ModelFrontEnd>(),
            services.GetRequiredService<ILocalSiloDetails>(), monitor.Current);
        context.Response.StatusCode = 200;
        context.Response.ContentType = "application/json";
        context.Response.Headers.CacheControl = "no-store";
        await PoolJoinInfo.SerializeAsync(context.Response.Body, info, context.RequestAborted);
    }

    public static PoolJoinInfo Describe(GatewayOptions options, ModelFrontEnd model, ILocalSiloDetails localSilo, PoolSnapshot pool)
    {
        JoinMembership membership;
        if (!string.IsNullOrWhiteSpace(options.RedisConnectionString))
            membership = new JoinMembership(JoinMembership.Redis, null);
        else
            // Development clustering needs every silo to name the same primary: ours, unless we joined another.
            membership = new JoinMembership(JoinMembership.Development,
                string.IsNullOrWhiteSpace(options.PrimarySiloEndpoint) ? $"{options.AdvertisedHost}:{localSilo.SiloAddress.Endpoint.Port}" : options.PrimarySiloEndpoint);
        var spans = new List<JoinSpan>(pool.Stages.Count);
        foreach (var stage in pool.Stages)
        {
            spans.Add(new JoinSpan(stage.NodeId, stage.Endpoint, stage.LayerStart, stage.LayerEnd, stage.Healthy, stage.OpenSessions,
                Finite(stage.StepsPerSecond), stage.FreeKvTokens, stage.KvBudgetTokens, Finite(stage.MsPerToken)));
        }
        return new PoolJoinInfo(new JoinModel(model.ModelId, model.Name, model.LayerCount, model.Info.Architecture), options.ClusterId, membership, spans);
    }

    // JSON has no NaN or infinity.
    private static double Finite(double value) => double.IsFinite(value) ? Math.Round(value, 3) : 0;
}
