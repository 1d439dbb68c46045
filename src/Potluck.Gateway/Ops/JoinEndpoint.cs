using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Potluck.Cluster;
using Potluck.Cluster.Directory;
using Potluck.Cluster.Joining;
using Potluck.Gateway.Access;
using Potluck.Gateway.Api;
using Potluck.Gateway.Head;
using Potluck.Gateway.Routing;
using Potluck.Hosting;

namespace Potluck.Gateway.Ops;

/// <summary>
/// GET /api/join (public): the pool's model (a node with another file refuses), its pool endpoint and CA certificate;
/// nothing secret. On the pool endpoint, to members only (<see cref="Pool.PoolEndpoint"/>): GET /api/pool/join, how to
/// reach membership and who holds which layers with what load (to choose a span), including nodes that announced a
/// span and are still loading it; POST /api/pool/announce, a member says which span it is about to load (listed as
/// joining until it reports).
/// </summary>
public static class JoinEndpoint
{
    /// <summary>How long a request waits for the gateway's first pool view, so a fresh gateway does not report an empty pool.</summary>
    private static readonly TimeSpan FirstViewWait = TimeSpan.FromSeconds(3);

    private static readonly TimeSpan DirectoryTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Announcement bodies are a few hundred bytes; anything far larger is not one.</summary>
    private const int MaxAnnouncementBytes = 16 * 1024;

    public static void Map(WebApplication app)
    {
        app.MapGet(PublicJoinInfo.Path, HandleAsync).AllowAnonymous();
    }

    /// <summary>The public document: model, pool endpoint (on the host the caller reached this gateway by) and pool CA.</summary>
    public static async Task HandleAsync(HttpContext context)
    {
        var services = context.RequestServices;
        var model = services.GetRequiredService<ModelFrontEnd>();
        var options = services.GetRequiredService<GatewayOptions>();
        var port = services.GetRequiredService<Pool.PoolListener>().Port;
        var host = context.Request.Host.HasValue ? context.Request.Host.Host : options.AdvertisedHost;
        if (host.Contains(':', StringComparison.Ordinal) && !host.StartsWith('[')) host = $"[{host}]";
        var info = new PublicJoinInfo(PublicJoinInfo.CurrentVersion, new JoinModel(model.ModelId, model.Name, model.LayerCount, model.Info.Architecture),
            $"https://{host}:{port}/", Potluck.Security.PoolCertificates.ToPem(services.GetRequiredService<MemberSecurity>().Trust.Authority));
        context.Response.StatusCode = 200;
        context.Response.ContentType = "application/json";
        context.Response.Headers.CacheControl = "no-store";
        await context.Response.WriteAsync(info.ToJson(), context.RequestAborted);
    }

    /// <summary>The members' document (the caller's certificate was checked by the pool endpoint).</summary>
    public static async Task HandleMembersAsync(HttpContext context)
    {
        var services = context.RequestServices;
        var monitor = services.GetRequiredService<PoolMonitor>();
        await monitor.WaitForFirstRefreshAsync(FirstViewWait, context.RequestAborted);
        var model = services.GetRequiredService<ModelFrontEnd>();
        var joining = await JoiningNodesAsync(services, model.ModelId, context.RequestAborted);
        var pool = monitor.Current;
        // A node's announcement ends with its first shard report (one directory call), while the cached view can be a
        // refresh old: a node that had just started serving was in neither, and the next joiner took its span. The
        // directory read after the announcements has it; until the view does, it is listed as joining (taken).
        joining = [.. joining, .. await ServingSinceViewAsync(services, pool, model.ModelId, context.RequestAborted)];
        var info = Describe(services.GetRequiredService<GatewayOptions>(), model, services.GetRequiredService<ILocalSiloDetails>(), pool, joining);
        context.Response.StatusCode = 200;
        context.Response.ContentType = "application/json";
        context.Response.Headers.CacheControl = "no-store";
        await PoolJoinInfo.SerializeAsync(context.Response.Body, info, context.RequestAborted);
    }

    public static PoolJoinInfo Describe(GatewayOptions options, ModelFrontEnd model, ILocalSiloDetails localSilo, PoolSnapshot pool,
        IReadOnlyList<JoiningNode>? joining = null)
    {
        JoinMembership membership;
        if (!string.IsNullOrWhiteSpace(options.RedisConnectionString))
            membership = new JoinMembership(JoinMembership.Redis, null);
        else
            // Development clustering needs every silo to name the same primary: ours, unless we joined another.
            membership = new JoinMembership(JoinMembership.Development,
                string.IsNullOrWhiteSpace(options.PrimarySiloEndpoint) ? $"{options.AdvertisedHost}:{localSilo.SiloAddress.Endpoint.Port}" : options.PrimarySiloEndpoint);
        var spans = new List<JoinSpan>(pool.Stages.Count + (joining?.Count ?? 0));
        foreach (var stage in pool.Stages)
        {
            spans.Add(new JoinSpan(stage.NodeId, stage.Endpoint, stage.LayerStart, stage.LayerEnd, stage.Healthy, stage.OpenSessions,
                Finite(stage.StepsPerSecond), stage.FreeKvTokens, stage.KvBudgetTokens, Finite(stage.MsPerToken)));
        }
        if (joining is not null)
        {
            foreach (var node in joining)
            {
                // Not healthy (it serves nothing yet), so older nodes' choosers skip it; newer ones count it as taken.
                if (node.ModelId == model.ModelId && node.LayerEnd <= model.LayerCount)
                    spans.Add(new JoinSpan(node.NodeId, node.GrpcEndpoint, node.LayerStart, node.LayerEnd, false, 0, 0, 0, 0, 0, Joining: true));
            }
        }
        return new PoolJoinInfo(new JoinModel(model.ModelId, model.Name, model.LayerCount, model.Info.Architecture), options.ClusterId, membership, spans);
    }

    /// <summary>Shards of this model in the directory now that <paramref name="pool"/> (the cached view) lacks.</summary>
    private static async Task<IReadOnlyList<JoiningNode>> ServingSinceViewAsync(IServiceProvider services, PoolSnapshot pool, string modelId, CancellationToken ct)
    {
        try
        {
            var view = await services.GetRequiredService<IGrainFactory>().GetGrain<IPoolDirectoryGrain>(PoolKeys.Default).GetView()
                .WaitAsync(DirectoryTimeout, ct);
            var result = new List<JoiningNode>();
            foreach (var shard in view.Shards)
            {
                var s = shard.Status;
                if (s.ModelId != modelId || !shard.Healthy) continue;
                if (pool.Stages.Any(stage => stage.NodeId == s.NodeId && stage.LayerStart == s.LayerStart && stage.LayerEnd == s.LayerEnd)) continue;
                result.Add(new JoiningNode(s.NodeId, s.ModelId, s.LayerStart, s.LayerEnd, s.GrpcEndpoint, view.AsOfUtc, view.AsOfUtc));
            }
            return result;
        }
        catch (Exception e) when (e is TimeoutException or OrleansException)
        {
            // As with the announcements: a hint for choosers; the cached view still answers.
            return [];
        }
    }

    /// <summary>The pool directory's live announcements for this model; none when the directory cannot be asked now.</summary>
    public static async Task<IReadOnlyList<JoiningNode>> JoiningNodesAsync(IServiceProvider services, string modelId, CancellationToken ct)
    {
        try
        {
            var all = await services.GetRequiredService<IGrainFactory>().GetGrain<IPoolDirectoryGrain>(PoolKeys.Default).GetJoining()
                .WaitAsync(DirectoryTimeout, ct);
            var result = new List<JoiningNode>(all.Count);
            foreach (var node in all)
                if (node.ModelId == modelId) result.Add(node);
            return result;
        }
        catch (Exception e) when (e is TimeoutException or OrleansException)
        {
            // The pool view still answers; joining entries are a hint for choosers, not a correctness matter.
            services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(JoinEndpoint)).LogWarning(e, "Could not read joining nodes from the pool directory");
            return [];
        }
    }

    /// <summary>A member's announcement; <paramref name="caller"/> is its certificate's identity, which the announcement must name.</summary>
    public static async Task AnnounceAsync(HttpContext context, Potluck.Security.PoolIdentity caller)
    {
        var services = context.RequestServices;
        var model = services.GetRequiredService<ModelFrontEnd>();
        JoinAnnouncement announcement;
        try
        {
            announcement = await ReadAnnouncementAsync(context.Request, model, context.RequestAborted);
            if (announcement.NodeId != caller.NodeId)
                throw new ApiErrorException(new ApiError(403, $"A member announces itself: the certificate names {caller.NodeId}, not {announcement.NodeId}.",
                    ApiError.InvalidRequest, "node_id", "identity_mismatch"));
        }
        catch (ApiErrorException e)
        {
            await e.Error.WriteAsync(context);
            return;
        }
        var now = DateTime.UtcNow;
        var node = new JoiningNode(announcement.NodeId, announcement.ModelId, announcement.Start, announcement.End, announcement.Endpoint,
            now, now + JoinAnnouncement.Lifetime);
        await services.GetRequiredService<IGrainFactory>().GetGrain<IPoolDirectoryGrain>(PoolKeys.Default).AnnounceJoining(node)
            .WaitAsync(DirectoryTimeout, context.RequestAborted);
        services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(JoinEndpoint)).LogInformation(
            "Node {NodeId} announced it is loading layers {Layers} at {Endpoint}", node.NodeId, LayerRange.Format(node.LayerStart, node.LayerEnd), node.GrpcEndpoint);
        context.Response.StatusCode = 200;
        context.Response.ContentType = "application/json";
        context.Response.Headers.CacheControl = "no-store";
        await context.Response.WriteAsync(new JoinAnnouncementAccepted(node.NodeId, "joining", node.ExpiresAtUtc).ToJson(), context.RequestAborted);
    }

    /// <summary>Parses and checks an announcement; every problem is an OpenAI-style 400 naming the field.</summary>
    internal static async Task<JoinAnnouncement> ReadAnnouncementAsync(HttpRequest request, ModelFrontEnd model, CancellationToken ct)
    {
        if (request.ContentLength is > MaxAnnouncementBytes)
            throw new ApiErrorException(new ApiError(413, $"An announcement is at most {MaxAnnouncementBytes} bytes.", ApiError.InvalidRequest, null, "request_too_large"));
        JsonDocument document;
        try
        {
            document = await JsonDocument.ParseAsync(request.Body, cancellationToken: ct);
        }
        catch (JsonException e)
        {
            throw new ApiErrorException(ApiError.BadRequest($"The body is not valid JSON: {e.Message}", null, "invalid_json"));
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new ApiErrorException(ApiError.BadRequest("The body must be a JSON object.", null, "invalid_json"));
            var nodeId = RequiredString(root, "node_id");
            try
            {
                ShardKeys.ValidateNodeId(nodeId);
            }
            catch (ArgumentException e)
            {
                throw new ApiErrorException(ApiError.BadRequest(e.Message.Split(" (Parameter", 2)[0], "node_id", "invalid_value"));
            }
            var modelId = RequiredString(root, "model_id");
            if (modelId != model.ModelId)
                throw new ApiErrorException(ApiError.BadRequest($"This pool serves model {model.ModelId} ({model.Name}), not {modelId}.", "model_id", "model_mismatch"));
            var start = RequiredInt(root, "start");
            var end = RequiredInt(root, "end");
            if (start < 0 || start >= model.LayerCount) throw new ApiErrorException(ApiError.OutOfRange("start", $"between 0 and {model.LayerCount - 1}"));
            if (end <= start || end > model.LayerCount) throw new ApiErrorException(ApiError.OutOfRange("end", $"greater than start and at most {model.LayerCount}"));
            var endpoint = RequiredString(root, "endpoint");
            if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || string.IsNullOrEmpty(uri.Host) || endpoint.Length > 512)
                throw new ApiErrorException(ApiError.BadRequest($"Invalid value for 'endpoint': '{Shorten(endpoint)}' is not an http(s) URL such as http://10.0.0.5:7100.", "endpoint", "invalid_value"));
            return new JoinAnnouncement(nodeId, modelId, start, end, endpoint);
        }
    }

    private static string RequiredString(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) throw new ApiErrorException(ApiError.Missing(name));
        if (value.ValueKind != JsonValueKind.String) throw new ApiErrorException(ApiError.WrongType(name, "a string"));
        return value.GetString()!;
    }

    private static int RequiredInt(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) throw new ApiErrorException(ApiError.Missing(name));
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt32(out var number)) throw new ApiErrorException(ApiError.WrongType(name, "an integer"));
        return number;
    }

    private static string Shorten(string text) => text.Length > 80 ? text[..80] + "…" : text;

    // JSON has no NaN or infinity.
    private static double Finite(double value) => double.IsFinite(value) ? Math.Round(value, 3) : 0;
}
