using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Potluck.Gateway.Access;
using Potluck.Gateway.Sessions;
using Potluck.Gateway.Telemetry;

namespace Potluck.Gateway.Ops;

/// <summary>
/// What the dashboard reads besides /api/pool: the last minutes of the gateway's own metrics (/api/stats/recent),
/// the running sessions with their routes (/api/sessions), recent pool events and departed nodes (/api/events); and
/// its static assets (/dashboard/NAME). The JSON endpoints are operator reads (the admin key or the dashboard's
/// login cookie when an admin key is set).
/// </summary>
public static class DashboardEndpoints
{
    /// <summary>What /api/stats/recent returns without ?seconds: five minutes.</summary>
    public const int DefaultSeconds = 300;

    public static void Map(WebApplication app)
    {
        app.MapGet("/api/stats/recent", RecentAsync).RequireAuthorization(AccessPolicies.OperatorRead);
        app.MapGet("/api/sessions", SessionsAsync).RequireAuthorization(AccessPolicies.OperatorRead);
        app.MapGet("/api/events", EventsAsync).RequireAuthorization(AccessPolicies.OperatorRead);
        // The page's script and style hold nothing secret; the login form needs the style before logging in.
        app.MapGet("/dashboard/{name}", AssetAsync).AllowAnonymous();
    }

    private static Task AssetAsync(HttpContext context)
    {
        var name = (string)context.Request.RouteValues["name"]!;
        if (!Dashboard.Assets.TryGetValue(name, out var asset))
        {
            context.Response.StatusCode = StatusCodes.Status404NotFound;
            return Task.CompletedTask;
        }
        context.Response.ContentType = asset.ContentType;
        context.Response.Headers.CacheControl = "no-cache";
        context.Response.Headers.XContentTypeOptions = "nosniff";
        context.Response.ContentLength = asset.Content.Length;
        return context.Response.Body.WriteAsync(asset.Content, context.RequestAborted).AsTask();
    }

    private static Task RecentAsync(HttpContext context)
    {
        var seconds = DefaultSeconds;
        if (context.Request.Query.TryGetValue("seconds", out var text))
        {
            if (!int.TryParse(text.ToString(), NumberStyles.None, CultureInfo.InvariantCulture, out seconds) || seconds < 1)
                return new Api.ApiError(400, $"seconds must be a whole number from 1 to {RecentStats.Capacity}.", Api.ApiError.InvalidRequest, "seconds", "invalid_value")
                    .WriteAsync(context);
            seconds = Math.Min(seconds, RecentStats.Capacity);
        }
        var samples = context.RequestServices.GetRequiredService<RecentStats>().Latest(seconds);
        return OpsEndpoints.WriteJsonAsync(context, 200, json =>
        {
            json.WriteNumber("interval_seconds", DashboardSampler.Period.TotalSeconds);
            json.WriteNumber("capacity", RecentStats.Capacity);
            json.WriteString("now", DateTime.UtcNow);
            json.WriteStartArray("samples");
            foreach (var s in samples)
            {
                json.WriteStartObject();
                json.WriteNumber("t", new DateTimeOffset(s.TimeUtc).ToUnixTimeMilliseconds());
                json.WriteNumber("seconds", Math.Round(s.Seconds, 3));
                json.WriteNumber("tokens", s.CompletionTokens);
                json.WriteNumber("tokens_per_second", s.TokensPerSecond);
                WriteNullable(json, "ttft_ms", s.TimeToFirstTokenMs);
                WriteNullable(json, "ttft_max_ms", s.MaxTimeToFirstTokenMs);
                json.WriteNumber("queued", s.Queued);
                json.WriteNumber("active", s.Active);
                json.WriteNumber("requests", s.Requests);
                json.WriteNumber("errors", s.Errors);
                json.WriteNumber("server_errors", s.ServerErrors);
                json.WriteNumber("reroutes", s.Reroutes);
                WriteNullable(json, "wait_p50_s", s.WaitP50Seconds);
                WriteNullable(json, "wait_p95_s", s.WaitP95Seconds);
                json.WriteNumber("rejections", s.Rejections);
                json.WriteEndObject();
            }
            json.WriteEndArray();
        });
    }

    private static Task SessionsAsync(HttpContext context)
    {
        var running = context.RequestServices.GetRequiredService<RunningSessions>().Running;
        var now = DateTime.UtcNow;
        return OpsEndpoints.WriteJsonAsync(context, 200, json =>
        {
            json.WriteStartArray("sessions");
            foreach (var session in running.OrderBy(s => s.StartedUtc))
            {
                json.WriteStartObject();
                json.WriteString("id", session.Id);
                json.WriteString("started", session.StartedUtc);
                var age = Math.Max((now - session.StartedUtc).TotalSeconds, 0);
                json.WriteNumber("age_seconds", Math.Round(age, 1));
                if (session.Generation is { } run)
                {
                    json.WriteNumber("prompt_tokens", run.PromptTokens);
                    json.WriteNumber("completion_tokens", run.CompletionTokens);
                    json.WriteNumber("reroutes", run.Reroutes);
                    json.WriteStartArray("route");
                    if (run.Route is { } plan)
                    {
                        foreach (var hop in plan.Hops)
                        {
                            json.WriteStartObject();
                            json.WriteString("node", hop.NodeId);
                            json.WriteNumber("start", hop.LayerStart);
                            json.WriteNumber("end", hop.LayerEnd);
                            json.WriteEndObject();
                        }
                    }
                    json.WriteEndArray();
                }
                json.WriteEndObject();
            }
            json.WriteEndArray();
        });
    }

    private static Task EventsAsync(HttpContext context)
    {
        var events = context.RequestServices.GetRequiredService<PoolEvents>();
        return OpsEndpoints.WriteJsonAsync(context, 200, json =>
        {
            json.WriteStartArray("events");
            foreach (var e in events.Events)
            {
                json.WriteStartObject();
                json.WriteString("time", e.TimeUtc);
                json.WriteString("kind", e.Kind);
                json.WriteString("node", e.NodeId);
                json.WriteNumber("start", e.LayerStart);
                json.WriteNumber("end", e.LayerEnd);
                json.WriteString("detail", e.Detail);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteStartArray("departed");
            foreach (var d in events.Departed)
            {
                json.WriteStartObject();
                json.WriteString("id", d.NodeId);
                json.WriteString("endpoint", d.Endpoint);
                json.WriteStartObject("span");
                json.WriteNumber("start", d.LayerStart);
                json.WriteNumber("end", d.LayerEnd);
                json.WriteEndObject();
                json.WriteString("state", d.State);
                json.WriteString("detail", d.Detail);
                json.WriteString("since", d.SinceUtc);
                if (d.ProcessId is { } pid) json.WriteNumber("process_id", pid);
                else json.WriteNull("process_id");
                json.WriteEndObject();
            }
            json.WriteEndArray();
        });
    }

    private static void WriteNullable(Utf8JsonWriter json, string name, double? value)
    {
        if (value is { } v) json.WriteNumber(name, v);
        else json.WriteNull(name);
    }
}
