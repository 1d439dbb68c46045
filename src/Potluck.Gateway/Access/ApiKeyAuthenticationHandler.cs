using System.Security.Claims;
using System.Text.Encodings.Web;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Potluck.Gateway.Access;

/// <summary>
/// The API-key scheme: a key from <c>Authorization: Bearer KEY</c> (OpenAI's SDKs) or <c>x-api-key: KEY</c>
/// (Anthropic's), matched against <see cref="AccessKeys"/>. No key is no result; an unknown key fails. Whether either
/// matters is the policies' call (an open API ignores both).
/// </summary>
public sealed class ApiKeyAuthenticationHandler(IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder,
    GatewayAccess access) : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
{
    public const string SchemeName = "ApiKey";

    /// <summary>The key's name, the partition its rate limits count in.</summary>
    public const string KeyNameClaim = "potluck/key";

    protected override Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        if (PresentedKey(Request) is not { } presented) return Task.FromResult(AuthenticateResult.NoResult());
        if (access.Keys.Match(presented) is not { } key)
        {
            // An open API takes any key (SDKs insist on sending one, e.g. "unused"): not worth a failure log per request.
            return Task.FromResult(access.ApiIsOpen ? AuthenticateResult.NoResult() : AuthenticateResult.Fail("the key is not one of this gateway's keys"));
        }
        var identity = new ClaimsIdentity(
        [
            new Claim(KeyNameClaim, key.Name),
            new Claim(ClaimTypes.Name, key.Name),
            new Claim(ClaimTypes.Role, key.Role == KeyRole.Admin ? AccessPolicies.AdminRole : AccessPolicies.ClientRole),
        ], SchemeName);
        return Task.FromResult(AuthenticateResult.Success(new AuthenticationTicket(new ClaimsPrincipal(identity), SchemeName)));
    }

    protected override Task HandleChallengeAsync(AuthenticationProperties properties) => AccessErrors.Unauthorized(Context, admin: false);

    protected override Task HandleForbiddenAsync(AuthenticationProperties properties) => AccessErrors.AdminRequired(Context);

    /// <summary>The key a request carries: the Bearer token, else x-api-key; null when neither is there.</summary>
    public static string? PresentedKey(HttpRequest request)
    {
        var authorization = request.Headers.Authorization.ToString();
        if (authorization.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            var token = authorization["Bearer ".Length..].Trim();
            if (token.Length > 0) return token;
        }
        var header = request.Headers["x-api-key"].ToString().Trim();
        return header.Length > 0 ? header : null;
    }
}
