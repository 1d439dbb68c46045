using System.Text.Json;

namespace Potluck.Cluster.Joining;

/// <summary>
/// The unauthenticated part of joining, served on the public API at <see cref="Path"/> (and on the pool endpoint): which
/// model the pool serves, where its pool endpoint is, and the pool CA certificate (public; a joiner checks it against
/// its token's fingerprint before it sends anything). No cluster id, no seed, no spans: those need a member certificate
/// (<see cref="PoolJoinInfo"/>).
/// </summary>
/// <param name="Version">The shape of this document: <see cref="CurrentVersion"/>. Version 1 (older gateways) published the pool itself here.</param>
/// <param name="PoolUrl">The gateway's pool endpoint, https://HOST:PORT (enrolment, renewal, the members' join document).</param>
/// <param name="PoolCa">The pool CA certificate (PEM). Linux TLS servers never send a self-signed root, so it travels here.</param>
public sealed record PublicJoinInfo(int Version, JoinModel Model, string PoolUrl, string PoolCa)
{
    public const string Path = "/api/join";
    public const int CurrentVersion = 2;

    public string ToJson() => JsonSerializer.Serialize(this, PoolJoinJsonContext.Default.PublicJoinInfo);

    /// <exception cref="FormatException">Not this document, or an older gateway's.</exception>
    public static PublicJoinInfo Parse(string json)
    {
        PublicJoinInfo? info;
        try
        {
            info = JsonSerializer.Deserialize(json, PoolJoinJsonContext.Default.PublicJoinInfo);
        }
        catch (JsonException e)
        {
            throw new FormatException($"not a pool join document: {e.Message}", e);
        }
        if (info is null) throw new FormatException("not a pool join document: empty");
        if (info.Version < CurrentVersion)
            throw new FormatException("the gateway publishes an old join document (version 1, without a pool endpoint); upgrade the gateway");
        if (info.Model is null || string.IsNullOrWhiteSpace(info.Model.Id) || info.Model.Layers < 1)
            throw new FormatException("the join document has no model id and layer count");
        if (!Uri.TryCreate(info.PoolUrl, UriKind.Absolute, out var pool) || pool.Scheme != "https")
            throw new FormatException($"the join document's pool_url '{info.PoolUrl}' is not an https URL");
        if (string.IsNullOrWhiteSpace(info.PoolCa) || !info.PoolCa.Contains("BEGIN CERTIFICATE", StringComparison.Ordinal))
            throw new FormatException("the join document carries no pool CA certificate");
        return info;
    }
}

/// <summary>POST /api/pool/enroll and /api/pool/renew: a PKCS#10 request (base64 DER) for this node; the token only to enroll.</summary>
public sealed record EnrollRequest(string? Token, string NodeId, string Csr)
{
    public const string EnrollPath = "/api/pool/enroll";
    public const string RenewPath = "/api/pool/renew";

    /// <summary>Requests are a token and a CSR, about 1 KB; anything far larger is not one.</summary>
    public const int MaxBytes = 16 * 1024;

    public string ToJson() => JsonSerializer.Serialize(this, PoolJoinJsonContext.Default.EnrollRequest);
}

/// <summary>An issued certificate (PEM), the pool CA (PEM) and the pool id.</summary>
public sealed record EnrollResponse(string Certificate, string Ca, string PoolId)
{
    public string ToJson() => JsonSerializer.Serialize(this, PoolJoinJsonContext.Default.EnrollResponse);

    /// <exception cref="FormatException">Not this document.</exception>
    public static EnrollResponse Parse(string json)
    {
        try
        {
            var response = JsonSerializer.Deserialize(json, PoolJoinJsonContext.Default.EnrollResponse);
            if (response is null || string.IsNullOrEmpty(response.Certificate) || string.IsNullOrEmpty(response.Ca) || string.IsNullOrEmpty(response.PoolId))
                throw new FormatException("not an enrolment answer");
            return response;
        }
        catch (JsonException e)
        {
            throw new FormatException($"not an enrolment answer: {e.Message}", e);
        }
    }
}
