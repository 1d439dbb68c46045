using System.Security.Cryptography.X509Certificates;

namespace Potluck.Security;

/// <summary>What a pool certificate lets its holder be.</summary>
public enum PoolRole
{
    /// <summary>A trusted member: the gateway or a lab node. Only members may be Orleans silos.</summary>
    Member,

    /// <summary>A community volunteer: serves spans over the pool edge, never a silo.</summary>
    Volunteer,
}

/// <summary>
/// Who a pool certificate names: its pool, role and node id, carried as the one SAN URI
/// <c>potluck://&lt;pool-id&gt;/&lt;role&gt;/&lt;node-id&gt;</c>. A node's id is its certificate's.
/// </summary>
public readonly record struct PoolIdentity(string PoolId, PoolRole Role, string NodeId)
{
    public const string Scheme = "potluck";

    /// <summary>Ids are DNS-label-like so they survive URIs, file names and metric labels unchanged.</summary>
    public const int MaxIdLength = 63;

    public Uri ToUri() => new($"{Scheme}://{PoolId}/{RoleName(Role)}/{NodeId}");

    public override string ToString() => ToUri().ToString();

    public static string RoleName(PoolRole role) => role switch
    {
        PoolRole.Member => "member",
        PoolRole.Volunteer => "volunteer",
        _ => throw new ArgumentOutOfRangeException(nameof(role)),
    };

    public static bool TryParseRole(string text, out PoolRole role)
    {
        switch (text)
        {
            case "member": role = PoolRole.Member; return true;
            case "volunteer": role = PoolRole.Volunteer; return true;
            default: role = default; return false;
        }
    }

    /// <exception cref="ArgumentException">Not a valid pool or node id.</exception>
    public static PoolIdentity Create(string poolId, PoolRole role, string nodeId)
    {
        if (!IsValidId(poolId)) throw new ArgumentException($"'{poolId}' is not a valid pool id: {IdRule}", nameof(poolId));
        if (!IsValidId(nodeId)) throw new ArgumentException($"'{nodeId}' is not a valid node id: {IdRule}", nameof(nodeId));
        return new PoolIdentity(poolId, role, nodeId);
    }

    public const string IdRule = "1 to 63 characters of a-z, A-Z, 0-9, '-', '_' or '.', starting with a letter or digit";

    public static bool IsValidId(string? id)
    {
        if (string.IsNullOrEmpty(id) || id.Length > MaxIdLength || !char.IsAsciiLetterOrDigit(id[0])) return false;
        foreach (var c in id)
            if (!char.IsAsciiLetterOrDigit(c) && c is not ('-' or '_' or '.')) return false;
        return true;
    }

    public static bool TryParse(Uri? uri, out PoolIdentity identity)
    {
        identity = default;
        if (uri is null || !uri.IsAbsoluteUri || uri.Scheme != Scheme || !string.IsNullOrEmpty(uri.Query) || !string.IsNullOrEmpty(uri.Fragment)) return false;
        var segments = uri.AbsolutePath.Split('/', StringSplitOptions.None);
        // "/member/node-1" splits into "", "member", "node-1".
        if (segments.Length != 3 || segments[0].Length != 0 || !TryParseRole(segments[1], out var role)) return false;
        var pool = uri.Host;
        var node = segments[2];
        if (!IsValidId(pool) || !IsValidId(node)) return false;
        // Uri lower-cases the host; the pool id is compared case-insensitively for that reason.
        identity = new PoolIdentity(pool, role, node);
        return true;
    }

    /// <summary>The identity of a certificate's single potluck:// SAN URI; null when it has none or more than one.</summary>
    public static PoolIdentity? FromCertificate(X509Certificate2 certificate)
    {
        PoolIdentity? found = null;
        foreach (var extension in certificate.Extensions)
        {
            if (extension is not X509SubjectAlternativeNameExtension san) continue;
            foreach (var name in EnumerateUris(san))
            {
                if (!Uri.TryCreate(name, UriKind.Absolute, out var uri) || uri.Scheme != Scheme) continue;
                if (found is not null || !TryParse(uri, out var identity)) return null;
                found = identity;
            }
        }
        return found;
    }

    private static IEnumerable<string> EnumerateUris(X509SubjectAlternativeNameExtension san)
    {
        // The BCL enumerates DNS names and IPs only; URIs are read from the raw GeneralNames.
        var reader = new System.Formats.Asn1.AsnReader(san.RawData, System.Formats.Asn1.AsnEncodingRules.DER);
        var names = reader.ReadSequence();
        var uriTag = new System.Formats.Asn1.Asn1Tag(System.Formats.Asn1.TagClass.ContextSpecific, 6);
        var result = new List<string>();
        while (names.HasData)
        {
            var tag = names.PeekTag();
            if (tag == uriTag) result.Add(names.ReadCharacterString(System.Formats.Asn1.UniversalTagNumber.IA5String, uriTag));
            else names.ReadEncodedValue();
        }
        return result;
    }

    public bool SamePool(string poolId) => string.Equals(PoolId, poolId, StringComparison.OrdinalIgnoreCase);
}
