using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.AspNetCore.DataProtection.XmlEncryption;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.HostFiltering;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Potluck.Gateway.Access;

/// <summary>Registers and orders the gateway's access control (see <see cref="GatewayAccess"/>).</summary>
public static class AccessSetup
{
    public static void AddPotluckAccess(this IServiceCollection services, GatewayAccess access)
    {
        services.AddSingleton(access);
        services.AddSingleton(access.Keys);
        if (access.Certificate is { } certificate) services.AddSingleton(certificate);

        // WebApplication already puts HostFiltering first in the pipeline; these are its hosts.
        services.Configure<HostFilteringOptions>(o =>
        {
            o.AllowedHosts = [.. access.AllowedHosts];
            o.AllowEmptyHosts = true;
        });
        services.AddCors(o =>
        {
            if (access.Options.CorsOrigins.Count == 0) return;
            o.AddDefaultPolicy(policy => policy.WithOrigins([.. access.Options.CorsOrigins]).WithMethods("GET", "POST").AllowAnyHeader()
                .WithExposedHeaders("x-potluck-route", "Retry-After"));
        });

        // The login cookie dies with the process (re-login after a restart) and nothing is written to disk.
        services.AddDataProtection().SetApplicationName("potluck-gateway");
        services.Configure<KeyManagementOptions>(o =>
        {
            o.XmlRepository = new InMemoryKeyRepository();
            // The keys never leave this process's memory, so there is nothing to encrypt them against.
            o.XmlEncryptor = new NullXmlEncryptor();
        });
        services.AddAuthentication(ApiKeyAuthenticationHandler.SchemeName)
            .AddScheme<AuthenticationSchemeOptions, ApiKeyAuthenticationHandler>(ApiKeyAuthenticationHandler.SchemeName, null)
            .AddCookie(AccessPolicies.DashboardScheme, o =>
            {
                o.Cookie.Name = $"potluck_admin_{access.Options.Port}";
                o.Cookie.HttpOnly = true;
                o.Cookie.SameSite = SameSiteMode.Strict;
                o.Cookie.SecurePolicy = CookieSecurePolicy.SameAsRequest;
                o.Cookie.Path = "/";
                o.ExpireTimeSpan = TimeSpan.FromHours(8);
                o.SlidingExpiration = true;
                // An API, not a site: no redirects to a login path; the result handler answers instead.
                o.Events.OnRedirectToLogin = context =>
                {
                    context.Response.StatusCode = StatusCodes.Status401Unauthorized;
                    return Task.CompletedTask;
                };
                o.Events.OnRedirectToAccessDenied = context =>
                {
                    context.Response.StatusCode = StatusCodes.Status403Forbidden;
                    return Task.CompletedTask;
                };
            });
        services.AddAuthorization(o => AccessPolicies.Add(o, access));
        services.AddSingleton<Microsoft.AspNetCore.Authorization.IAuthorizationMiddlewareResultHandler, AccessResultHandler>();
        services.AddRateLimiter(o => RateLimits.Configure(o, access));
    }

    /// <summary>
    /// HTTPS on the API's listener when a certificate is configured. The source is asked on every handshake, so a renewed
    /// certificate is used at once; its context (certificate plus chain) is built once per certificate.
    /// </summary>
    public static void UseApiHttps(this ListenOptions listen, GatewayAccess access)
    {
        if (access.Certificate is not { } source) return;
        var gate = new Lock();
        (X509Certificate2 For, SslStreamCertificateContext Context)? cached = null;
        listen.UseHttps(new TlsHandshakeCallbackOptions
        {
            OnConnection = _ =>
            {
                var current = source.Current;
                SslStreamCertificateContext context;
                lock (gate)
                {
                    if (cached is not { } hit || !ReferenceEquals(hit.For, current))
                        cached = hit = (current, SslStreamCertificateContext.Create(current, source.Chain, offline: true));
                    context = hit.Context;
                }
                return ValueTask.FromResult(new SslServerAuthenticationOptions { ServerCertificateContext = context });
            },
        });
    }

    /// <summary>
    /// The order (after WebApplication's own HostFiltering): routing, CORS, authentication, the JSON content-type check,
    /// the rate limiter, then authorization; endpoints run last. Limits count before authorization so key guessing is
    /// limited too, and everything here runs before the generation service admits a request.
    /// </summary>
    public static void UsePotluckAccess(this WebApplication app, GatewayAccess access)
    {
        var log = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Potluck.Gateway.Access");
        foreach (var warning in access.Warnings) log.LogWarning("{Warning}", warning);
        log.LogInformation(
            "Access: API {Api}; operator endpoints {Operator}; allowed hosts {Hosts}; CORS {Cors}; {Tls}; limits {Rpm} requests/min, {Concurrency} concurrent per key or client",
            access.ApiIsOpen ? "open (no API keys)" : $"needs one of {access.Keys.ApiKeyCount} API keys",
            access.Operator switch { OperatorAccess.AdminKey => "need the admin key", OperatorAccess.Open => "open", _ => "closed (no admin key)" },
            string.Join(", ", access.AllowedHosts),
            access.Options.CorsOrigins.Count == 0 ? "off" : string.Join(", ", access.Options.CorsOrigins),
            access.Certificate is null ? "HTTP" : "HTTPS",
            access.Options.RateLimitPerMinute, access.Options.ConcurrencyLimit);

        app.UseRouting();
        if (access.Options.CorsOrigins.Count > 0) app.UseCors();
        app.UseAuthentication();
        app.Use(JsonContentType.CheckAsync);
        app.UseRateLimiter();
        app.UseAuthorization();
    }
}
