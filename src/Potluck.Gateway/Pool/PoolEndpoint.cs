using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Potluck.Cluster;
using Potluck.Cluster.Joining;
using Potluck.Gateway.Api;
using Potluck.Gateway.Ops;
using Potluck.Gateway.Routing;
using Potluck.Hosting;
using Potluck.Security;

namespace Potluck.Gateway.Pool;

/// <summary>
/// What the pool endpoint serves (only on its own port; nothing else answers there, and none of this on the public API):
/// POST /api/pool/enroll (an invite token and a CSR: this node's first certificate), POST /api/pool/renew (a member's
/// certificate and a CSR for the same identity), GET /api/pool/join (the members' join document) and POST
/// /api/pool/announce (a member about to load a span), plus the public GET /api/join.
/// </summary>
public static class PoolEndpoint
{
    private static readonly PoolRole[] AnyRole = [PoolRole.Member, PoolRole.Volunteer];

    /// <summary>First in the pipeline: a request on the pool port is answered here and goes no further.</summary>
    public static async Task MiddlewareAsync(HttpContext context, RequestDelegate next)
    {
        var listener = context.RequestServices.GetRequiredService<PoolListener>();
        if (context.Connection.LocalPort != listener.Port || listener.Port == 0)
        {
            await next(context);
            return;
        }
        context.Response.Headers.CacheControl = "no-store";
        var path = context.Request.Path.Value ?? "";
        var method = context.Request.Method;
        try
        {
            switch (path)
            {
                case EnrollRequest.EnrollPath when HttpMethods.IsPost(method):
                    await EnrollAsync(context);
                    break;
                case EnrollRequest.RenewPath when HttpMethods.IsPost(method):
                    await RenewAsync(context);
                    break;
                case PoolJoinInfo.Path when HttpMethods.IsGet(method):
                    RequireMember(context);
                    await JoinEndpoint.HandleMembersAsync(context);
                    break;
                case JoinAnnouncement.Path when HttpMethods.IsPost(method):
                    await JoinEndpoint.AnnounceAsync(context, RequireMember(context));
                    break;
                case PublicJoinInfo.Path when HttpMethods.IsGet(method):
                    await JoinEndpoint.HandleAsync(context);
                    break;
                case EnrollRequest.EnrollPath or EnrollRequest.RenewPath or PoolJoinInfo.Path or JoinAnnouncement.Path or PublicJoinInfo.Path:
                    await new ApiError(405, $"Method {method} is not allowed on {path}.", ApiError.InvalidRequest, null, "method_not_allowed").WriteAsync(context);
                    break;
                default:
                    await new ApiError(404, $"Unknown path {path} on the pool endpoint (it serves {EnrollRequest.EnrollPath}, {EnrollRequest.RenewPath}, " +
                        $"{PoolJoinInfo.Path}, {JoinAnnouncement.Path} and {PublicJoinInfo.Path}).", ApiError.InvalidRequest, null, "unknown_url").WriteAsync(context);
                    break;
            }
        }
        catch (ApiErrorException e)
        {
            await e.Error.WriteAsync(context);
        }
    }

    /// <summary>The caller's identity from its client certificate: a trusted member of this pool, else 401/403.</summary>
    private static PoolIdentity RequireMember(HttpContext context, params PoolRole[] roles)
    {
        var security = context.RequestServices.GetRequiredService<MemberSecurity>();
        var certificate = context.Connection.ClientCertificate;
        if (certificate is null)
            throw new ApiErrorException(new ApiError(401, "This endpoint needs a pool member certificate (join with `potluck node --join URL --token TOKEN`).",
                ApiError.InvalidRequest, null, "certificate_required"));
        var trust = security.Trust.Validate(certificate, roles.Length == 0 ? [PoolRole.Member] : roles);
        if (!trust.Trusted) throw new ApiErrorException(new ApiError(403, $"Certificate refused: {trust.Reason}.", ApiError.InvalidRequest, null, "certificate_refused"));
        return trust.Identity;
    }

    private static async Task EnrollAsync(HttpContext context)
    {
        var services = context.RequestServices;
        var authority = services.GetRequiredService<MemberSecurity>().Authority
            ?? throw new ApiErrorException(new ApiError(503, "This gateway does not hold the pool CA.", ApiError.ServerError, null, "no_authority"));
        var log = services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(PoolEndpoint));
        var (tokenText, nodeId, csr) = await ReadAsync(context, tokenRequired: true);
        JoinToken token;
        try
        {
            token = JoinToken.Parse(tokenText!);
        }
        catch (PoolSecurityException e)
        {
            throw new ApiErrorException(ApiError.BadRequest(e.Message, "token", "invalid_token"));
        }
        if (authority.Revocations.IsRevoked(nodeId))
            throw Refused($"node {nodeId} is revoked from pool {authority.PoolId}; choose another node id", "node_revoked");
        // An invite admits a new member; it never takes over the name of one that serves now.
        var gateway = services.GetRequiredService<GatewayOptions>();
        if (nodeId == gateway.GatewayId || services.GetRequiredService<PoolMonitor>().Current.Stages.Any(s => s.NodeId == nodeId))
            throw new ApiErrorException(new ApiError(409, $"Node id {nodeId} is in use in this pool; choose another (--node-id).", ApiError.InvalidRequest, "node_id", "node_id_in_use"));
        // Check the request before redeeming: a malformed CSR must not burn the invite.
        CheckRequest(csr);
        var outcome = authority.Tokens.Redeem(token, out var stored);
        if (outcome != RedeemOutcome.Accepted)
        {
            log.LogWarning("Refused an enrolment as {NodeId}: {Outcome} (token {TokenId})", nodeId, outcome, token.Id);
            throw Refused(JoinTokenStore.Describe(outcome), "token_" + outcome.ToString().ToLowerInvariant());
        }
        var identity = PoolIdentity.Create(authority.PoolId, stored!.Role, nodeId);
        await WriteIssuedAsync(context, authority, identity, csr);
        log.LogInformation("Enrolled {Identity} with token {TokenId} ({UsesLeft} uses left)", identity, stored.Id, stored.UsesLeft);
    }

    private static async Task RenewAsync(HttpContext context)
    {
        var services = context.RequestServices;
        var authority = services.GetRequiredService<MemberSecurity>().Authority
            ?? throw new ApiErrorException(new ApiError(503, "This gateway does not hold the pool CA.", ApiError.ServerError, null, "no_authority"));
        var identity = RequireMember(context, AnyRole);
        var (_, nodeId, csr) = await ReadAsync(context, tokenRequired: false);
        if (nodeId != identity.NodeId)
            throw Refused($"a renewal keeps the identity of the certificate presented ({identity.NodeId}), not {nodeId}", "identity_mismatch");
        CheckRequest(csr);
        await WriteIssuedAsync(context, authority, identity, csr);
        services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(PoolEndpoint)).LogInformation("Renewed the certificate of {Identity}", identity);
    }

    private static async Task WriteIssuedAsync(HttpContext context, PoolAuthority authority, PoolIdentity identity, byte[] csr)
    {
        X509Certificate2 issued;
        try
        {
            issued = authority.IssueForRequest(identity, csr);
        }
        catch (PoolSecurityException e)
        {
            throw Refused(e.Message, "not_issued");
        }
        using (issued)
        {
            context.Response.StatusCode = 200;
            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync(new EnrollResponse(PoolCertificates.ToPem(issued), PoolCertificates.ToPem(authority.Certificate), authority.PoolId).ToJson(),
                context.RequestAborted);
        }
    }

    private static void CheckRequest(byte[] csr)
    {
        try
        {
            System.Security.Cryptography.X509Certificates.CertificateRequest.LoadSigningRequest(csr, System.Security.Cryptography.HashAlgorithmName.SHA256);
        }
        catch (System.Security.Cryptography.CryptographicException e)
        {
            throw new ApiErrorException(ApiError.BadRequest($"Invalid value for 'csr': not a signed PKCS#10 request ({e.Message}).", "csr", "invalid_value"));
        }
    }

    private static ApiErrorException Refused(string message, string code) => new(new ApiError(403, message, ApiError.InvalidRequest, null, code));

    /// <summary>Reads {token, node_id, csr}; bounded, every problem an OpenAI-style 400 naming the field.</summary>
    private static async Task<(string? Token, string NodeId, byte[] Csr)> ReadAsync(HttpContext context, bool tokenRequired)
    {
        var request = context.Request;
        if (request.ContentLength is > EnrollRequest.MaxBytes)
            throw new ApiErrorException(new ApiError(413, $"A request is at most {EnrollRequest.MaxBytes} bytes.", ApiError.InvalidRequest, null, "request_too_large"));
        var buffer = new byte[EnrollRequest.MaxBytes + 1];
        var length = 0;
        while (length < buffer.Length)
        {
            var read = await request.Body.ReadAsync(buffer.AsMemory(length), context.RequestAborted);
            if (read == 0) break;
            length += read;
        }
        if (length > EnrollRequest.MaxBytes)
            throw new ApiErrorException(new ApiError(413, $"A request is at most {EnrollRequest.MaxBytes} bytes.", ApiError.InvalidRequest, null, "request_too_large"));
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(buffer.AsMemory(0, length));
        }
        catch (JsonException e)
        {
            throw new ApiErrorException(ApiError.BadRequest($"The body is not valid JSON: {e.Message}", null, "invalid_json"));
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new ApiErrorException(ApiError.BadRequest("The body must be a JSON object.", null, "invalid_json"));
            var token = tokenRequired ? String(root, "token") : null;
            var nodeId = String(root, "node_id");
            if (!PoolIdentity.IsValidId(nodeId))
                throw new ApiErrorException(ApiError.BadRequest($"Invalid value for 'node_id': {PoolIdentity.IdRule}.", "node_id", "invalid_value"));
            byte[] csr;
            try
            {
                csr = Convert.FromBase64String(String(root, "csr"));
            }
            catch (FormatException)
            {
                throw new ApiErrorException(ApiError.BadRequest("Invalid value for 'csr': expected base64 (a DER PKCS#10 request).", "csr", "invalid_value"));
            }
            return (token, nodeId, csr);
        }
    }

    private static string String(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) throw new ApiErrorException(ApiError.Missing(name));
        if (value.ValueKind != JsonValueKind.String) throw new ApiErrorException(ApiError.WrongType(name, "a string"));
        try
        {
            return value.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw new ApiErrorException(ApiError.BadRequest($"Invalid value for '{name}': not valid UTF-8.", name, "invalid_value"));
        }
    }
}
