using Microsoft.AspNetCore.Http;
using Potluck.Gateway.Access;

namespace Potluck.Gateway.Admission;

/// <summary>Whose line in the admission queue a request waits in.</summary>
public static class AdmissionCaller
{
    /// <summary>The line of every request without a known key (an open API): they all share it.</summary>
    public const string Open = "";

    /// <summary>The authenticated key's name (as the rate limits partition), else <see cref="Open"/>.</summary>
    public static string Of(HttpContext context) =>
        context.User.FindFirst(ApiKeyAuthenticationHandler.KeyNameClaim)?.Value is { } name ? "key:" + name : Open;
}
