using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Potluck.Cluster;
using Potluck.Gateway.Access;
using Potluck.Gateway.Api;
using Potluck.Gateway.Head;
using Potluck.Gateway.Routing;
using Potluck.Gateway.Sessions;
using Potluck.Gateway.Telemetry;

namespace Potluck.Gateway.Ops;

/// <summary>Liveness, readiness, the pool view, session inspection and the dashboard page.</summary>
public static class OpsEndpoints
{
    public static void Map(WebApplication app)
    {
        // Live while the gateway's silo is an active pool member (Potluck.Hosting's checks); what it serves is /readyz.
        // Probes need no key; they say live/ready and why not, and (when pool details are guarded) nothing about addresses or routes.
        app.MapGet("/healthz", static async context =>
        {
            var report = await context.RequestServices.GetRequiredService<HealthCheckService>().CheckHealthAsync(context.RequestAborted);
            var healthy = report.Status == HealthStatus.Healthy;
            var guarded = context.RequestServices.GetRequiredService<GatewayAccess>().PoolDetailsGuarded;
            await WriteJsonAsync(context, healthy ? 200 : 503, json =>
            {
                json.WriteString("status", healthy ? "live" : "unhealthy");
                if (healthy) return;
                foreach (var (name, entry) in report.Entries) json.WriteString(name, guarded ? entry.Status.ToString() : entry.Description ?? entry.Status.ToString());
            });
        }).AllowAnonymous();
        app.MapGet("/readyz", ReadyAsync).AllowAnonymous();
        app.MapGet("/api/pool", PoolAsync).RequireAuthorization(AccessPolicies.OperatorRead);
        JoinEndpoint.Map(app);
        app.MapGet("/api/sessions/{id}", SessionAsync).RequireAuthorization(AccessPolicies.OperatorRead);
        app.MapPost("/api/sessions/{id}/cancel", CancelAsync).RequireAuthorization(AccessPolicies.Operator);
        DashboardLogin.Map(app);
        DashboardEndpoints.Map(app);
    }

    private static Task ReadyAsync(HttpContext context)
    {
        var pool = context.RequestServices.GetRequiredService<PoolMonitor>().Current;
        var plan = RoutePlanner.Plan(pool, 1, null, out var failure);
        var guarded = context.RequestServices.GetRequiredService<GatewayAccess>().PoolDetailsGuarded;
        return WriteJsonAsync(context, plan is null ? 503 : 200, json =>
        {
            json.WriteString("status", plan is null ? "not_ready" : "ready");
            if (plan is null)
            {
                json.WriteString("reason", failure!.Message);
                WriteGaps(json, "missing_layers", failure.MissingLayers);
            }
            else if (!guarded)
            {
                json.WriteString("route", plan.ToString());
            }
            // Replicas per span: `serve` waits until every node it started is counted, and an operator sees what one failure costs.
            WriteSpans(json, pool, withNodeIds: !guarded);
        });
    }

    /// <summary>The healthy spans grouped by their layers: how many replicas each has (and, unguarded, which nodes).</summary>
    private static void WriteSpans(Utf8JsonWriter json, PoolSnapshot pool, bool withNodeIds)
    {
        var spans = pool.Stages.Where(stage => stage.Healthy)
            .GroupBy(stage => (stage.LayerStart, stage.LayerEnd))
            .OrderBy(group => group.Key.LayerStart).ThenBy(group => group.Key.LayerEnd);
        var nodes = 0;
        json.WriteStartArray("spans");
        foreach (var span in spans)
        {
            json.WriteStartObject();
            json.WriteString("layers", LayerRange.Format(span.Key.LayerStart, span.Key.LayerEnd));
            json.WriteNumber("start", span.Key.LayerStart);
            json.WriteNumber("end", span.Key.LayerEnd);
            json.WriteNumber("replicas", span.Count());
            if (withNodeIds)
            {
                json.WriteStartArray("nodes");
                foreach (var stage in span.OrderBy(stage => stage.NodeId, StringComparer.Ordinal)) json.WriteStringValue(stage.NodeId);
                json.WriteEndArray();
            }
            json.WriteEndObject();
            nodes += span.Count();
        }
        json.WriteEndArray();
        json.WriteNumber("serving_nodes", nodes);
    }

    private static async Task PoolAsync(HttpContext context)
    {
        var services = context.RequestServices;
        var monitor = services.GetRequiredService<PoolMonitor>();
        var model = services.GetRequiredService<ModelFrontEnd>();
        var telemetry = services.GetRequiredService<GatewayTelemetry>();
        var pool = monitor.Current;
        var plan = RoutePlanner.Plan(pool, 1, null, out var failure);
        var gaps = RoutePlanner.MissingLayers(pool);
        var joining = await JoinEndpoint.JoiningNodesAsync(services, model.ModelId, context.RequestAborted);
        await WriteJsonAsync(context, 200, json =>
        {
            json.WriteStartObject("model");
            json.WriteString("name", model.Name);
            json.WriteString("id", model.ModelId);
            json.WriteString("architecture", model.Info.Architecture);
            json.WriteNumber("layers", model.LayerCount);
            json.WriteNumber("context_length", model.ContextLength);
            json.WriteEndObject();
            json.WriteString("as_of", pool.AsOfUtc);
            json.WriteStartObject("gateway");
            json.WriteNumber("process_id", Environment.ProcessId);
            json.WriteNumber("active_sessions", telemetry.ActiveSessions);
            json.WriteNumber("peak_active_sessions", telemetry.PeakActiveSessions);
            json.WriteEndObject();
            json.WriteStartArray("nodes");
            foreach (var stage in pool.Stages)
            {
                json.WriteStartObject();
                json.WriteString("id", stage.NodeId);
                json.WriteString("endpoint", stage.Endpoint);
                WriteSpan(json, stage.LayerStart, stage.LayerEnd);
                json.WriteString("state", stage.Healthy ? "healthy" : "unhealthy");
                if (stage.Problem is null) json.WriteNull("problem");
                else json.WriteString("problem", stage.Problem);
                json.WriteNumber("open_sessions", stage.OpenSessions);
                json.WriteNumber("load_steps_per_second", Finite(stage.StepsPerSecond));
                json.WriteNumber("free_kv_tokens", stage.FreeKvTokens);
                json.WriteNumber("kv_budget_tokens", stage.KvBudgetTokens);
                json.WriteNumber("ms_per_token", Finite(stage.MsPerToken));
                if (double.IsFinite(stage.HopLatencyMs)) json.WriteNumber("hop_latency_ms", Math.Round(stage.HopLatencyMs, 3));
                else json.WriteNull("hop_latency_ms");
                if (stage.ProcessId is { } pid) json.WriteNumber("process_id", pid);
                else json.WriteNull("process_id");
                json.WriteEndObject();
            }
            foreach (var node in pool.MismatchedNodes)
            {
                // Same fields as a stage, so the dashboard shows it; it holds another model's layers and is never routed to.
                json.WriteStartObject();
                json.WriteString("id", node.NodeId);
                json.WriteString("endpoint", node.Endpoint);
                WriteSpan(json, node.LayerStart, node.LayerEnd);
                json.WriteString("state", "model-mismatch");
                json.WriteString("problem", $"serves model {node.ModelId}; this gateway serves {model.ModelId}");
                json.WriteString("model_id", node.ModelId);
                json.WriteNumber("open_sessions", 0);
                json.WriteNumber("load_steps_per_second", 0);
                json.WriteNumber("free_kv_tokens", 0);
                json.WriteNumber("kv_budget_tokens", 0);
                json.WriteNumber("ms_per_token", 0);
                json.WriteNull("hop_latency_ms");
                if (node.ProcessId is { } pid) json.WriteNumber("process_id", pid);
                else json.WriteNull("process_id");
                json.WriteEndObject();
            }
            foreach (var node in joining)
            {
                // Announced and loading: shown so operators see it coming; not a stage, never routed to.
                json.WriteStartObject();
                json.WriteString("id", node.NodeId);
                json.WriteString("endpoint", node.GrpcEndpoint);
                WriteSpan(json, node.LayerStart, node.LayerEnd);
                json.WriteString("state", "joining");
                json.WriteString("problem", $"announced at {node.AnnouncedAtUtc:HH:mm:ss} UTC; loading its span (expires {node.ExpiresAtUtc:HH:mm:ss} UTC unless it reports)");
                json.WriteNumber("open_sessions", 0);
                json.WriteNumber("load_steps_per_second", 0);
                json.WriteNumber("free_kv_tokens", 0);
                json.WriteNumber("kv_budget_tokens", 0);
                json.WriteNumber("ms_per_token", 0);
                json.WriteNull("hop_latency_ms");
                json.WriteNull("process_id");
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteStartObject("coverage");
            json.WriteBoolean("full_chain", plan is not null);
            WriteGaps(json, "gaps", gaps);
            if (plan is not null) json.WriteString("route", plan.ToString());
            else json.WriteString("problem", failure!.Message);
            WriteSpans(json, pool, withNodeIds: true);
            json.WriteEndObject();
        });
    }

    private static double Finite(double value) => double.IsFinite(value) ? Math.Round(value, 3) : 0;

    // Numbers for programs, "[4, 8)" for people; one notation in every text field.
    private static void WriteSpan(Utf8JsonWriter json, int start, int end)
    {
        json.WriteStartObject("span");
        json.WriteNumber("start", start);
        json.WriteNumber("end", end);
        json.WriteString("layers", LayerRange.Format(start, end));
        json.WriteEndObject();
    }

    private static void WriteGaps(Utf8JsonWriter json, string name, IReadOnlyList<LayerGap> gaps)
    {
        json.WriteStartArray(name);
        foreach (var gap in gaps)
        {
            json.WriteStartObject();
            json.WriteNumber("start", gap.Start);
            json.WriteNumber("end", gap.End);
            json.WriteString("layers", gap.ToString());
            json.WriteString("hint", gap.Hint);
            json.WriteEndObject();
        }
        json.WriteEndArray();
    }

    private static async Task SessionAsync(HttpContext context)
    {
        var id = (string)context.Request.RouteValues["id"]!;
        // A grain is activated only for a session this gateway runs or ran recently: random ids must not create activations.
        if (!IsKnownSession(context, id))
        {
            await new ApiError(404, $"No session '{Shorten(id)}' is known to this gateway.", ApiError.InvalidRequest, "id", "session_not_found").WriteAsync(context);
            return;
        }
        var snapshot = await context.RequestServices.GetRequiredService<IGrainFactory>().GetGrain<ISessionGrain>(id).Get();
        if (snapshot.Start is null)
        {
            await new ApiError(404, $"No session '{id}' is known to this gateway.", ApiError.InvalidRequest, "id", "session_not_found").WriteAsync(context);
            return;
        }
        await WriteJsonAsync(context, 200, json =>
        {
            json.WriteString("id", snapshot.SessionId);
            json.WriteString("state", snapshot.State);
            if (snapshot.FinishReason is null) json.WriteNull("finish_reason");
            else json.WriteString("finish_reason", snapshot.FinishReason);
            json.WriteNumber("prompt_tokens", snapshot.Start.PromptTokens.Length);
            json.WriteNumber("seed", snapshot.Start.Seed);
            json.WriteNumber("temperature", snapshot.Start.Temperature);
            json.WriteNumber("kv_length", snapshot.KvLength);
            json.WriteNumber("reroutes", snapshot.Reroutes);
            json.WriteStartArray("generated_tokens");
            foreach (var t in snapshot.GeneratedTokens) json.WriteNumberValue(t);
            json.WriteEndArray();
            json.WriteStartArray("route");
            foreach (var hop in snapshot.Route)
            {
                json.WriteStartObject();
                json.WriteString("node", hop.NodeId);
                json.WriteString("endpoint", hop.Endpoint);
                json.WriteNumber("start", hop.LayerStart);
                json.WriteNumber("end", hop.LayerEnd);
                json.WriteString("layers", LayerRange.Format(hop.LayerStart, hop.LayerEnd));
                json.WriteEndObject();
            }
            json.WriteEndArray();
        });
    }

    private static async Task CancelAsync(HttpContext context)
    {
        var id = (string)context.Request.RouteValues["id"]!;
        var cancelled = IsKnownSession(context, id) &&
                        await context.RequestServices.GetRequiredService<IGrainFactory>().GetGrain<ISessionGrain>(id).Cancel();
        if (!cancelled)
        {
            await new ApiError(404, $"No running session '{Shorten(id)}' in this gateway.", ApiError.InvalidRequest, "id", "session_not_found").WriteAsync(context);
            return;
        }
        await WriteJsonAsync(context, 200, json => json.WriteBoolean("cancelled", true));
    }

    /// <summary>Session ids this gateway issues: "chatcmpl-" or "cmpl-" and 32 lowercase hex digits.</summary>
    internal static bool IsSessionIdFormat(string id)
    {
        var hex = id.StartsWith("chatcmpl-", StringComparison.Ordinal) ? id.AsSpan(9)
            : id.StartsWith("cmpl-", StringComparison.Ordinal) ? id.AsSpan(5) : default;
        if (hex.Length != 32) return false;
        foreach (var c in hex)
            if (c is not ((>= '0' and <= '9') or (>= 'a' and <= 'f'))) return false;
        return true;
    }

    private static bool IsKnownSession(HttpContext context, string id) =>
        IsSessionIdFormat(id) && context.RequestServices.GetRequiredService<RunningSessions>().IsKnown(id);

    private static string Shorten(string id) => id.Length <= 64 ? id : id[..64] + "...";

    /// <summary>One JSON object as the response, not cached: every ops and dashboard read answers this way.</summary>
    internal static async Task WriteJsonAsync(HttpContext context, int status, Action<Utf8JsonWriter> body)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        context.Response.Headers.CacheControl = "no-store";
        await using var json = new Utf8JsonWriter(context.Response.BodyWriter);
        json.WriteStartObject();
        body(json);
        json.WriteEndObject();
        await json.FlushAsync(context.RequestAborted);
    }
}
