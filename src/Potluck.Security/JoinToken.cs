using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Potluck.Security;

/// <summary>
/// An invite to a pool: which pool, the fingerprint of its CA (so the joiner pins the gateway's TLS to it before it
/// sends anything), and a one-time secret that the CA holder keeps only hashed. Text form: <c>plk1_</c> + base64url JSON.
/// </summary>
public sealed record JoinToken(string PoolId, string AuthorityFingerprint, string Id, string Secret, PoolRole Role)
{
    public const string Prefix = "plk1_";

    /// <summary>Tokens are a few hundred characters; anything far longer is not one.</summary>
    private const int MaxTextLength = 2048;

    public override string ToString()
    {
        var json = JsonSerializer.SerializeToUtf8Bytes(new Wire(PoolId, AuthorityFingerprint, Id, Secret, PoolIdentity.RoleName(Role)), SecurityJsonContext.Default.Wire);
        return Prefix + Base64Url.EncodeToString(json);
    }

    /// <exception cref="PoolSecurityException">Not a Potluck join token.</exception>
    public static JoinToken Parse(string text)
    {
        text = text.Trim();
        if (!text.StartsWith(Prefix, StringComparison.Ordinal) || text.Length > MaxTextLength)
            throw new PoolSecurityException($"not a Potluck join token (it starts with {Prefix}; `potluck pool invite` prints one)");
        try
        {
            var wire = JsonSerializer.Deserialize(Base64Url.DecodeFromChars(text.AsSpan(Prefix.Length)), SecurityJsonContext.Default.Wire);
            if (wire is null || !PoolIdentity.IsValidId(wire.Pool) || !IsHex(wire.Fingerprint, 64) || !PoolIdentity.IsValidId(wire.Id)
                || string.IsNullOrEmpty(wire.Secret) || wire.Secret.Length > 128 || !PoolIdentity.TryParseRole(wire.Role, out var role))
                throw new PoolSecurityException("the join token is damaged (copy it again from `potluck pool invite`)");
            return new JoinToken(wire.Pool, wire.Fingerprint.ToLowerInvariant(), wire.Id, wire.Secret, role);
        }
        catch (Exception e) when (e is FormatException or JsonException)
        {
            throw new PoolSecurityException("the join token is damaged (copy it again from `potluck pool invite`)", e);
        }
    }

    /// <summary>What the CA holder stores instead of the secret.</summary>
    public static string HashSecret(string secret) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(secret)));

    internal static bool IsHex(string? text, int length)
    {
        if (text is null || text.Length != length) return false;
        foreach (var c in text)
            if (!char.IsAsciiHexDigit(c)) return false;
        return true;
    }

    internal sealed record Wire(
        [property: JsonPropertyName("p")] string Pool,
        [property: JsonPropertyName("f")] string Fingerprint,
        [property: JsonPropertyName("i")] string Id,
        [property: JsonPropertyName("s")] string Secret,
        [property: JsonPropertyName("r")] string Role);
}
