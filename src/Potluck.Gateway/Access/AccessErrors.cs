using Microsoft.AspNetCore.Http;
using Potluck.Gateway.Api;

namespace Potluck.Gateway.Access;

/// <summary>The OpenAI-shaped answers of access control: 401, 403, 415 and 429. No answer echoes a presented key.</summary>
public static class AccessErrors
{
    public const string InvalidApiKey = "invalid_api_key";
    public const string AdminKeyRequired = "admin_key_required";
    public const string AdminKeyNotConfigured = "admin_key_not_configured";
    public const string UnsupportedMediaType = "unsupported_media_type";
    public const string RateLimitExceeded = "rate_limit_exceeded";

    /// <summary>401 with <c>WWW-Authenticate: Bearer</c>: no key, or one this gateway does not know.</summary>
    public static Task Unauthorized(HttpContext context, bool admin)
    {
        var presented = ApiKeyAuthenticationHandler.PresentedKey(context.Request) is not null;
        var what = admin ? "the gateway's admin key" : "an API key";
        var message = presented
            ? $"Incorrect API key provided. This endpoint needs {what}."
            : $"You didn't provide an API key. This endpoint needs {what}, sent as 'Authorization: Bearer KEY' or 'x-api-key: KEY'.";
        context.Response.Headers.WWWAuthenticate = "Bearer";
        return new ApiError(401, message, ApiError.InvalidRequest, null, InvalidApiKey).WriteAsync(context);
    }

    /// <summary>403: a valid API key on an operator endpoint.</summary>
    public static Task AdminRequired(HttpContext context) =>
        new ApiError(403, "This endpoint needs the gateway's admin key; API keys do not grant it.", ApiError.InvalidRequest, null, AdminKeyRequired)
            .WriteAsync(context);

    /// <summary>403: an operator endpoint on a non-loopback gateway that has no admin key.</summary>
    public static Task OperatorClosed(HttpContext context) =>
        new ApiError(403,
            "The operator endpoints are closed: this gateway listens on a non-loopback address and has no admin key. " +
            "Start it with --admin-key (or --admin-key-file) and send that key.", ApiError.InvalidRequest, null, AdminKeyNotConfigured)
            .WriteAsync(context);

    public static Task WrongContentType(HttpContext context) =>
        new ApiError(415,
            $"Unsupported Content-Type '{Describe(context.Request.ContentType)}': POST bodies must be JSON, sent with 'Content-Type: application/json'.",
            ApiError.InvalidRequest, null, UnsupportedMediaType).WriteAsync(context);

    /// <summary>429 with <c>Retry-After</c> (whole seconds, at least 1).</summary>
    public static Task TooManyRequests(HttpContext context, string message, TimeSpan retryAfter)
    {
        var error = new ApiError(429, "", "requests", null, RateLimitExceeded) { RetryAfter = retryAfter };
        return (error with { Message = $"{message} Retry after {error.RetryAfterSeconds} s." }).WriteAsync(context);
    }

    private static string Describe(string? contentType)
    {
        if (string.IsNullOrEmpty(contentType)) return "none";
        // Only what is safe to reflect: a short printable prefix.
        var text = new string([.. contentType.Take(80).Where(c => c is >= ' ' and < (char)127)]);
        return text.Length == 0 ? "unprintable" : text;
    }
}
