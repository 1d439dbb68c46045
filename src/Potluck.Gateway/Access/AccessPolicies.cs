using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Authorization.Policy;
using Microsoft.AspNetCore.Http;

namespace Potluck.Gateway.Access;

/// <summary>
/// The authorization policies endpoints are mapped with. The OpenAI API is the fallback policy, so an endpoint mapped
/// without one needs an API key whenever keys are configured.
/// </summary>
public static class AccessPolicies
{
    /// <summary>The OpenAI API: an API key (or the admin key) when keys are configured, else open.</summary>
    public const string Api = "potluck-api";

    /// <summary>Operator actions (announce, cancel): the admin key in a header; never the dashboard's cookie (CSRF).</summary>
    public const string Operator = "potluck-operator";

    /// <summary>Operator reads (/api/pool, /api/sessions/{id}): the admin key in a header or the dashboard's cookie.</summary>
    public const string OperatorRead = "potluck-operator-read";

    /// <summary>/metrics: like <see cref="OperatorRead"/> when an admin key is set, else open (scrapers).</summary>
    public const string Metrics = "potluck-metrics";

    public const string AdminRole = "admin";
    public const string ClientRole = "client";

    /// <summary>The dashboard's cookie scheme (set by POST /login with the admin key).</summary>
    public const string DashboardScheme = "PotluckDashboard";

    public static void Add(AuthorizationOptions options, GatewayAccess access)
    {
        var api = access.ApiIsOpen
            ? Open()
            : new AuthorizationPolicyBuilder(ApiKeyAuthenticationHandler.SchemeName).RequireRole(ClientRole, AdminRole).Build();
        options.AddPolicy(Api, api);
        options.FallbackPolicy = api;
        options.AddPolicy(Operator, access.Operator switch
        {
            OperatorAccess.AdminKey => new AuthorizationPolicyBuilder(ApiKeyAuthenticationHandler.SchemeName).RequireRole(AdminRole).Build(),
            OperatorAccess.Open => Open(),
            _ => Closed(),
        });
        var read = access.Operator switch
        {
            OperatorAccess.AdminKey => new AuthorizationPolicyBuilder(ApiKeyAuthenticationHandler.SchemeName, DashboardScheme).RequireRole(AdminRole).Build(),
            OperatorAccess.Open => Open(),
            _ => Closed(),
        };
        options.AddPolicy(OperatorRead, read);
        options.AddPolicy(Metrics, access.Operator == OperatorAccess.AdminKey ? read : Open());
    }

    private static AuthorizationPolicy Open() => new AuthorizationPolicyBuilder().RequireAssertion(static _ => true).Build();

    private static AuthorizationPolicy Closed() => new AuthorizationPolicyBuilder().AddRequirements(new OperatorClosedRequirement()).Build();
}

/// <summary>Never met: operator endpoints on a non-loopback gateway without an admin key.</summary>
public sealed class OperatorClosedRequirement : IAuthorizationRequirement;

/// <summary>
/// Turns a failed policy into an OpenAI-shaped answer instead of a scheme's challenge (the cookie scheme would
/// redirect): closed operator endpoints 403, no or a wrong key 401 (WWW-Authenticate: Bearer), a key without the
/// admin role 403.
/// </summary>
public sealed class AccessResultHandler : IAuthorizationMiddlewareResultHandler
{
    public Task HandleAsync(RequestDelegate next, HttpContext context, AuthorizationPolicy policy, PolicyAuthorizationResult authorizeResult)
    {
        if (authorizeResult.Succeeded) return next(context);
        if (policy.Requirements.OfType<OperatorClosedRequirement>().Any()) return AccessErrors.OperatorClosed(context);
        var admin = policy.Requirements.OfType<Microsoft.AspNetCore.Authorization.Infrastructure.RolesAuthorizationRequirement>()
            .Any(r => !r.AllowedRoles.Contains(AccessPolicies.ClientRole));
        return authorizeResult.Forbidden ? AccessErrors.AdminRequired(context) : AccessErrors.Unauthorized(context, admin);
    }
}
