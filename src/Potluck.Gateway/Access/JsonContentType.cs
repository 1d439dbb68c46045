using Microsoft.AspNetCore.Http;
using Microsoft.Net.Http.Headers;

namespace Potluck.Gateway.Access;

/// <summary>Endpoint metadata: this POST takes an HTML form (the dashboard's login and logout), not JSON.</summary>
public sealed class AcceptsFormPost;

/// <summary>
/// Every POST, PUT or PATCH to an endpoint must say <c>Content-Type: application/json</c> (charset absent or UTF-8),
/// else 415. A browser can send text/plain or a form to another origin without asking; it cannot send JSON without a
/// CORS preflight, which the gateway refuses unless --cors-origin allows the origin. So this closes CSRF on the API.
/// </summary>
public static class JsonContentType
{
    public static Task CheckAsync(HttpContext context, RequestDelegate next)
    {
        var method = context.Request.Method;
        if (!(HttpMethods.IsPost(method) || HttpMethods.IsPut(method) || HttpMethods.IsPatch(method))) return next(context);
        // No endpoint: routing answers 404/405; a form endpoint reads its own body.
        if (context.GetEndpoint() is not { } endpoint || endpoint.Metadata.GetMetadata<AcceptsFormPost>() is not null) return next(context);
        return IsJson(context.Request.ContentType) ? next(context) : AccessErrors.WrongContentType(context);
    }

    /// <summary>application/json with no charset or a UTF-8 one.</summary>
    public static bool IsJson(string? contentType)
    {
        if (!MediaTypeHeaderValue.TryParse(contentType, out var media)) return false;
        if (!media.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase)) return false;
        var charset = media.Charset;
        return !charset.HasValue || charset.Equals("utf-8", StringComparison.OrdinalIgnoreCase) || charset.Equals("utf8", StringComparison.OrdinalIgnoreCase);
    }
}
