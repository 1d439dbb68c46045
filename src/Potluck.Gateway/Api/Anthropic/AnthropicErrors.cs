using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Potluck.Gateway.Api.Anthropic;

/// <summary>
/// Anthropic's error shape, {"type":"error","error":{"type","message"}}, for every error answered on /v1/messages
/// (validation, access control, rate limits, unknown routes), so Anthropic's SDKs read them as their own.
/// </summary>
public static class AnthropicErrors
{
    public const string Path = "/v1/messages";

    /// <summary>Whether errors on this request are answered in Anthropic's shape.</summary>
    public static bool Applies(HttpContext context) =>
        context.Request.Path.StartsWithSegments(Path, StringComparison.OrdinalIgnoreCase);

    /// <summary>Anthropic's error type for an HTTP status.</summary>
    public static string TypeOf(int status) => status switch
    {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 or 529 => "overloaded_error",
        >= 500 => "api_error",
        _ => "invalid_request_error",
    };

    /// <summary>
    /// The error type of <paramref name="error"/>: a pool at capacity is Anthropic's overloaded_error (the service is
    /// busy, not the caller over its own limit) though its status stays 429 with Retry-After, which the SDKs retry.
    /// </summary>
    public static string TypeOf(ApiError error) => error.Code == GenerationFailures.PoolAtCapacity ? "overloaded_error" : TypeOf(error.Status);

    public static void Write(Utf8JsonWriter writer, ApiError error, string? requestId = null)
    {
        writer.WriteStartObject();
        writer.WriteString("type", "error");
        writer.WriteStartObject("error");
        writer.WriteString("type", TypeOf(error));
        writer.WriteString("message", error.Message);
        writer.WriteEndObject();
        if (requestId is not null) writer.WriteString("request_id", requestId);
        writer.WriteEndObject();
    }
}
