using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Potluck.Security;

/// <summary>How a redemption went.</summary>
public enum RedeemOutcome { Accepted, Unknown, Used, Expired, WrongPool }

/// <summary>One stored invite: the secret only as its SHA-256.</summary>
public sealed record StoredJoinToken(string Id, string SecretSha256, PoolRole Role, DateTimeOffset CreatedUtc, DateTimeOffset ExpiresUtc,
    int UsesAllowed, int UsesTaken, string? Note)
{
    public int UsesLeft => Math.Max(0, UsesAllowed - UsesTaken);
}

/// <summary>
/// The pool's invites (tokens.json in the pool directory). Each operation reads, changes and writes the file under an
/// exclusive lock file, so `potluck pool invite` and a running gateway can both use it.
/// </summary>
public sealed class JoinTokenStore(string path, string poolId, string authorityFingerprint, TimeProvider? clock = null)
{
    public const int MaxUses = 100_000;
    public static readonly TimeSpan MaxLifetime = TimeSpan.FromDays(365);
    private readonly TimeProvider _clock = clock ?? TimeProvider.System;

    public string Path { get; } = path;

    /// <summary>A new invite; its text is shown once and never stored.</summary>
    public JoinToken Create(TimeSpan lifetime, int uses, PoolRole role, string? note = null)
    {
        if (lifetime <= TimeSpan.Zero || lifetime > MaxLifetime) throw new ArgumentOutOfRangeException(nameof(lifetime), $"a token lives between 1 s and {MaxLifetime.TotalDays:F0} days");
        if (uses is < 1 or > MaxUses) throw new ArgumentOutOfRangeException(nameof(uses), $"a token allows 1 to {MaxUses} uses");
        var id = "t" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        var secret = System.Buffers.Text.Base64Url.EncodeToString(RandomNumberGenerator.GetBytes(32));
        var now = _clock.GetUtcNow();
        Update(tokens => tokens.Add(new StoredJoinToken(id, JoinToken.HashSecret(secret), role, now, now + lifetime, uses, 0, note)));
        return new JoinToken(poolId, authorityFingerprint, id, secret, role);
    }

    /// <summary>
    /// Stores an invite made elsewhere (a Helm chart makes its nodes' token, so both sides hold it before the gateway
    /// starts): only its hash is kept. Registering the same token again renews its lifetime and uses.
    /// </summary>
    /// <exception cref="PoolSecurityException">The token is of another pool or CA, or its secret is too weak.</exception>
    public void Register(JoinToken token, TimeSpan lifetime, int uses, string? note = null)
    {
        if (lifetime <= TimeSpan.Zero || lifetime > MaxLifetime) throw new ArgumentOutOfRangeException(nameof(lifetime), $"a token lives between 1 s and {MaxLifetime.TotalDays:F0} days");
        if (uses is < 1 or > MaxUses) throw new ArgumentOutOfRangeException(nameof(uses), $"a token allows 1 to {MaxUses} uses");
        if (!token.PoolId.Equals(poolId, StringComparison.OrdinalIgnoreCase) || token.AuthorityFingerprint != authorityFingerprint)
            throw new PoolSecurityException(Describe(RedeemOutcome.WrongPool));
        // 32 random bytes in base64url are 43 characters; anything much shorter could be guessed.
        if (token.Secret.Length < 32) throw new PoolSecurityException("the token's secret is shorter than 32 characters");
        var now = _clock.GetUtcNow();
        Update(tokens =>
        {
            tokens.RemoveAll(t => t.Id == token.Id);
            tokens.Add(new StoredJoinToken(token.Id, JoinToken.HashSecret(token.Secret), token.Role, now, now + lifetime, uses, 0, note));
        });
    }

    /// <summary>Takes one use of <paramref name="token"/> when it is known, unused, unexpired and of this pool.</summary>
    public RedeemOutcome Redeem(JoinToken token, out StoredJoinToken? stored)
    {
        StoredJoinToken? found = null;
        var outcome = RedeemOutcome.Unknown;
        if (!token.PoolId.Equals(poolId, StringComparison.OrdinalIgnoreCase) || token.AuthorityFingerprint != authorityFingerprint)
        {
            stored = null;
            return RedeemOutcome.WrongPool;
        }
        var presented = Encoding.ASCII.GetBytes(JoinToken.HashSecret(token.Secret));
        Update(tokens =>
        {
            var index = tokens.FindIndex(t => t.Id == token.Id);
            if (index < 0) return;
            var entry = tokens[index];
            if (!CryptographicOperations.FixedTimeEquals(presented, Encoding.ASCII.GetBytes(entry.SecretSha256))) return;
            found = entry;
            if (_clock.GetUtcNow() >= entry.ExpiresUtc) outcome = RedeemOutcome.Expired;
            else if (entry.UsesLeft == 0) outcome = RedeemOutcome.Used;
            else
            {
                found = tokens[index] = entry with { UsesTaken = entry.UsesTaken + 1 };
                outcome = RedeemOutcome.Accepted;
            }
        });
        stored = found;
        return outcome;
    }

    public IReadOnlyList<StoredJoinToken> List()
    {
        List<StoredJoinToken> result = [];
        Update(tokens => result = [.. tokens], write: false);
        return result;
    }

    /// <summary>Removes an invite before it is used up; true when it existed.</summary>
    public bool Delete(string id)
    {
        var removed = false;
        Update(tokens => removed = tokens.RemoveAll(t => t.Id == id) > 0);
        return removed;
    }

    public static string Describe(RedeemOutcome outcome) => outcome switch
    {
        RedeemOutcome.Accepted => "accepted",
        RedeemOutcome.Unknown => "the join token is not one this pool issued (or it was deleted); ask the operator for a new one (`potluck pool invite`)",
        RedeemOutcome.Used => "the join token has been used up; ask the operator for a new one (`potluck pool invite`)",
        RedeemOutcome.Expired => "the join token has expired; ask the operator for a new one (`potluck pool invite --ttl ...`)",
        RedeemOutcome.WrongPool => "the join token belongs to another pool (its pool id or CA fingerprint differs from this gateway's)",
        _ => outcome.ToString(),
    };

    private void Update(Action<List<StoredJoinToken>> change, bool write = true)
    {
        var directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path))!;
        SecureFiles.CreatePrivateDirectory(directory);
        using var exclusive = AcquireLock(Path + ".lock");
        List<StoredJoinToken> tokens;
        try
        {
            tokens = File.Exists(Path) ? JsonSerializer.Deserialize(SecureFiles.ReadText(Path, 64 << 20), SecurityJsonContext.Default.ListStoredJoinToken) ?? [] : [];
        }
        catch (JsonException e)
        {
            throw new PoolSecurityException($"{Path} is not a token store: {e.Message}", e);
        }
        var before = tokens.Count;
        change(tokens);
        if (!write) return;
        // Expired and used-up invites are of no further use; keep the file small.
        var now = _clock.GetUtcNow();
        tokens.RemoveAll(t => t.ExpiresUtc < now - TimeSpan.FromDays(1));
        SecureFiles.WriteText(Path, JsonSerializer.Serialize(tokens, SecurityJsonContext.Default.ListStoredJoinToken), secret: true);
    }

    private static FileStream AcquireLock(string path)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            try
            {
                // Left in place: deleting a lock file on close lets two waiters lock different inodes.
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(20);
            }
        }
    }
}
