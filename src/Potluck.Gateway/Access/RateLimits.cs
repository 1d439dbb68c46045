using System.Threading.RateLimiting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.RateLimiting;

namespace Potluck.Gateway.Access;

/// <summary>
/// Per-key limits with System.Threading.RateLimiting: a token bucket of requests per minute chained with a concurrency
/// limiter, partitioned by key name (the authenticated key) or by client IP (no or an unknown key). They run as
/// middleware, before any endpoint, so a rejected request never reaches the generation service's admission.
/// Liveness and readiness probes are not limited.
/// </summary>
public static class RateLimits
{
    /// <summary>The stricter limit on POST /login: admin-key guesses per client IP per minute.</summary>
    public const string LoginPolicy = "potluck-login";
    public const int LoginAttemptsPerMinute = 10;

    public static void Configure(RateLimiterOptions options, GatewayAccess access)
    {
        options.RejectionStatusCode = StatusCodes.Status429TooManyRequests;
        options.GlobalLimiter = PartitionedRateLimiter.CreateChained(
            PartitionedRateLimiter.Create<HttpContext, string>(context => RequestsPartition(context, access)),
            PartitionedRateLimiter.Create<HttpContext, string>(context => ConcurrencyPartition(context, access)));
        options.AddPolicy(LoginPolicy, context => RateLimitPartition.GetFixedWindowLimiter(ClientIp(context),
            _ => new FixedWindowRateLimiterOptions { PermitLimit = LoginAttemptsPerMinute, Window = TimeSpan.FromMinutes(1), QueueLimit = 0, AutoReplenishment = true }));
        options.OnRejected = (rejected, _) =>
        {
            var context = rejected.HttpContext;
            var partition = Partition(context);
            var who = partition is { KeyName: { } name } ? $"key '{name}'" : $"client {ClientIp(context)}";
            var (perMinute, concurrency) = LimitsOf(partition, access);
            if (rejected.Lease.TryGetMetadata(MetadataName.RetryAfter, out var retryAfter))
            {
                var limit = context.GetEndpoint()?.Metadata.GetMetadata<EnableRateLimitingAttribute>()?.PolicyName == LoginPolicy
                    ? $"{LoginAttemptsPerMinute} login attempts per minute"
                    : $"{perMinute} requests per minute";
                return new ValueTask(AccessErrors.TooManyRequests(context, $"Rate limit reached for {who}: {limit}.", retryAfter));
            }
            return new ValueTask(AccessErrors.TooManyRequests(context, $"Too many concurrent requests for {who}: at most {concurrency} at once.", TimeSpan.FromSeconds(1)));
        };
    }

    private static RateLimitPartition<string> RequestsPartition(HttpContext context, GatewayAccess access)
    {
        if (Partition(context) is not { } who) return RateLimitPartition.GetNoLimiter("");
        var (perMinute, _) = LimitsOf(who, access);
        return perMinute > 0 ? RateLimitPartition.GetTokenBucketLimiter(who.Id, _ => Bucket(perMinute)) : RateLimitPartition.GetNoLimiter(who.Id);
    }

    private static RateLimitPartition<string> ConcurrencyPartition(HttpContext context, GatewayAccess access)
    {
        if (Partition(context) is not { } who) return RateLimitPartition.GetNoLimiter("");
        var (_, permits) = LimitsOf(who, access);
        return permits > 0
            ? RateLimitPartition.GetConcurrencyLimiter(who.Id, _ => new ConcurrencyLimiterOptions { PermitLimit = permits, QueueLimit = 0 })
            : RateLimitPartition.GetNoLimiter(who.Id);
    }

    /// <summary>A key's own limits (from the keys file) over the gateway's defaults; 0 is no limit.</summary>
    private static (int PerMinute, int Concurrency) LimitsOf((string Id, string? KeyName)? who, GatewayAccess access)
    {
        var key = who?.KeyName is { } name ? access.Keys.ByName(name) : null;
        return (key?.RequestsPerMinute ?? access.Options.RateLimitPerMinute, key?.ConcurrencyLimit ?? access.Options.ConcurrencyLimit);
    }

    /// <summary>Whom a request counts against: its key, else its IP; null for the probes, which are never limited.</summary>
    private static (string Id, string? KeyName)? Partition(HttpContext context)
    {
        var path = context.Request.Path;
        if (path.Equals("/healthz", StringComparison.Ordinal) || path.Equals("/readyz", StringComparison.Ordinal)) return null;
        var name = context.User.FindFirst(ApiKeyAuthenticationHandler.KeyNameClaim)?.Value;
        return name is not null ? ($"key:{name}", name) : ($"ip:{ClientIp(context)}", null);
    }

    private static string ClientIp(HttpContext context) => context.Connection.RemoteIpAddress?.ToString() ?? "unknown";

    /// <summary>A bucket that holds a minute's requests and refills evenly: at least one token per second, or one per 60/N s below 60.</summary>
    internal static TokenBucketRateLimiterOptions Bucket(int perMinute) => perMinute >= 60
        ? new TokenBucketRateLimiterOptions
        {
            TokenLimit = perMinute,
            TokensPerPeriod = (perMinute + 59) / 60,
            ReplenishmentPeriod = TimeSpan.FromSeconds(1),
            QueueLimit = 0,
            AutoReplenishment = true,
        }
        : new TokenBucketRateLimiterOptions
        {
            TokenLimit = perMinute,
            TokensPerPeriod = 1,
            ReplenishmentPeriod = TimeSpan.FromSeconds(60.0 / perMinute),
            QueueLimit = 0,
            AutoReplenishment = true,
        };
}
