using System.Security.Claims;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Potluck.Gateway.Ops;

namespace Potluck.Gateway.Access;

/// <summary>
/// The dashboard (GET /) and its login: POST /login with the admin key sets an HttpOnly, SameSite=Strict cookie (Secure
/// over HTTPS) that lets the page read /api/pool, /api/sessions and /metrics; POST /logout clears it. The cookie never
/// authorizes the OpenAI API or an operator action.
/// </summary>
public static class DashboardLogin
{
    public static void Map(WebApplication app)
    {
        app.MapGet("/", PageAsync).AllowAnonymous();
        app.MapPost("/login", LoginAsync).AllowAnonymous().WithMetadata(new AcceptsFormPost()).RequireRateLimiting(RateLimits.LoginPolicy);
        app.MapPost("/logout", LogoutAsync).AllowAnonymous().WithMetadata(new AcceptsFormPost());
    }

    private static async Task PageAsync(HttpContext context)
    {
        var access = context.RequestServices.GetRequiredService<GatewayAccess>();
        if (access.Operator != OperatorAccess.AdminKey)
        {
            await WritePageAsync(context, 200, Dashboard.Page(loggedIn: false));
            return;
        }
        var cookie = await context.AuthenticateAsync(AccessPolicies.DashboardScheme);
        await WritePageAsync(context, 200, cookie.Succeeded ? Dashboard.Page(loggedIn: true) : Dashboard.Login(null));
    }

    private static async Task LoginAsync(HttpContext context)
    {
        var access = context.RequestServices.GetRequiredService<GatewayAccess>();
        if (!SameOrigin(context))
        {
            await WritePageAsync(context, 403, Dashboard.Login("The login form must be sent from this gateway's own page."));
            return;
        }
        if (access.Operator != OperatorAccess.AdminKey)
        {
            // Nothing to log in to: the dashboard is open (or closed for want of an admin key; the page says so).
            SeeOther(context);
            return;
        }
        if (!context.Request.HasFormContentType)
        {
            await WritePageAsync(context, 400, Dashboard.Login("Send the login form."));
            return;
        }
        var form = await context.Request.ReadFormAsync(context.RequestAborted);
        var key = form["key"].ToString().Trim();
        if (key.Length == 0 || !access.Keys.IsAdmin(key))
        {
            await WritePageAsync(context, 401, Dashboard.Login("That is not this gateway's admin key."));
            return;
        }
        var identity = new ClaimsIdentity(
            [new Claim(ClaimTypes.Name, "admin"), new Claim(ClaimTypes.Role, AccessPolicies.AdminRole)], AccessPolicies.DashboardScheme);
        await context.SignInAsync(AccessPolicies.DashboardScheme, new ClaimsPrincipal(identity), new AuthenticationProperties { IsPersistent = false });
        SeeOther(context);
    }

    private static async Task LogoutAsync(HttpContext context)
    {
        if (SameOrigin(context) && context.RequestServices.GetRequiredService<GatewayAccess>().Operator == OperatorAccess.AdminKey)
            await context.SignOutAsync(AccessPolicies.DashboardScheme);
        SeeOther(context);
    }

    /// <summary>A browser's Origin, when it sends one, must be this gateway (login CSRF).</summary>
    private static bool SameOrigin(HttpContext context)
    {
        var origin = context.Request.Headers.Origin.ToString();
        if (origin.Length == 0) return true;
        return Uri.TryCreate(origin, UriKind.Absolute, out var uri)
            && uri.Scheme.Equals(context.Request.Scheme, StringComparison.OrdinalIgnoreCase)
            && string.Equals(uri.Authority, context.Request.Host.Value, StringComparison.OrdinalIgnoreCase);
    }

    private static void SeeOther(HttpContext context)
    {
        context.Response.StatusCode = StatusCodes.Status303SeeOther;
        context.Response.Headers.Location = "/";
    }

    private static Task WritePageAsync(HttpContext context, int status, string html)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "text/html; charset=utf-8";
        var headers = context.Response.Headers;
        headers.CacheControl = "no-store";
        headers.XContentTypeOptions = "nosniff";
        headers.XFrameOptions = "DENY";
        // Not "no-referrer": with it Chromium sends "Origin: null" on the login form's POST, which SameOrigin refuses
        // (found by the browser test). "same-origin" still sends nothing to other sites.
        headers["Referrer-Policy"] = "same-origin";
        // The page's script and style are the gateway's own files (/dashboard/*); nothing inline, nothing from elsewhere.
        headers.ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
                                        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
        return context.Response.WriteAsync(html, context.RequestAborted);
    }
}
