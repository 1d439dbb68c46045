using Potluck.Security;

namespace Potluck.Security.Tests;

public sealed class JoinTokenTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("potluck-tokens-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void A_token_carries_the_pool_and_CA_fingerprint_and_is_stored_only_hashed()
    {
        using var authority = PoolAuthority.Create(Path.Combine(_root, "pool"), "lab");
        var token = authority.Tokens.Create(TimeSpan.FromHours(1), 1, PoolRole.Member);
        var text = token.ToString();
        Assert.StartsWith(JoinToken.Prefix, text);
        var parsed = JoinToken.Parse(text);
        Assert.Equal(token, parsed);
        Assert.Equal(authority.Fingerprint, parsed.AuthorityFingerprint);
        var stored = File.ReadAllText(authority.Tokens.Path);
        Assert.DoesNotContain(token.Secret, stored);
        Assert.Contains(JoinToken.HashSecret(token.Secret), stored);
    }

    [Fact]
    public void A_one_use_token_is_accepted_once_then_refused_as_used()
    {
        using var authority = PoolAuthority.Create(Path.Combine(_root, "pool"), "lab");
        var token = authority.Tokens.Create(TimeSpan.FromHours(1), 1, PoolRole.Member);
        Assert.Equal(RedeemOutcome.Accepted, authority.Tokens.Redeem(token, out _));
        Assert.Equal(RedeemOutcome.Used, authority.Tokens.Redeem(token, out _));
        // Another store on the same file (the gateway while `pool invite` runs) sees the same state.
        using var again = PoolAuthority.Load(Path.Combine(_root, "pool"));
        Assert.Equal(RedeemOutcome.Used, again.Tokens.Redeem(token, out _));
    }

    [Fact]
    public void Expired_forged_and_foreign_tokens_are_refused()
    {
        using var authority = PoolAuthority.Create(Path.Combine(_root, "pool"), "lab");
        var clock = new PoolAuthorityTests.FixedClock(DateTimeOffset.UtcNow.AddHours(2));
        var token = authority.Tokens.Create(TimeSpan.FromHours(1), 5, PoolRole.Member);
        var later = new JoinTokenStore(authority.Tokens.Path, "lab", authority.Fingerprint, clock);
        Assert.Equal(RedeemOutcome.Expired, later.Redeem(token, out _));
        Assert.Equal(RedeemOutcome.Unknown, authority.Tokens.Redeem(token with { Secret = "guess" }, out _));
        Assert.Equal(RedeemOutcome.WrongPool, authority.Tokens.Redeem(token with { PoolId = "elsewhere" }, out _));
        Assert.Equal(RedeemOutcome.Accepted, authority.Tokens.Redeem(token, out var stored));
        Assert.Equal(4, stored!.UsesLeft);
    }

    [Fact]
    public void A_token_made_elsewhere_is_registered_hashed_and_redeems_like_one_made_here()
    {
        using var authority = PoolAuthority.Create(Path.Combine(_root, "pool"), "lab");
        var made = new JoinToken("lab", authority.Fingerprint, "helm0123456789ab", new string('s', 43), PoolRole.Member);
        authority.Tokens.Register(JoinToken.Parse(made.ToString()), TimeSpan.FromHours(1), 2);
        Assert.DoesNotContain(made.Secret, File.ReadAllText(authority.Tokens.Path));
        Assert.Equal(RedeemOutcome.Accepted, authority.Tokens.Redeem(made, out _));
        Assert.Equal(RedeemOutcome.Accepted, authority.Tokens.Redeem(made, out _));
        Assert.Equal(RedeemOutcome.Used, authority.Tokens.Redeem(made, out _));
        Assert.Throws<PoolSecurityException>(() => authority.Tokens.Register(made with { AuthorityFingerprint = new string('0', 64) }, TimeSpan.FromHours(1), 1));
        Assert.Throws<PoolSecurityException>(() => authority.Tokens.Register(made with { Secret = "short" }, TimeSpan.FromHours(1), 1));
    }

    [Theory]
    [InlineData("")]
    [InlineData("hello")]
    [InlineData("plk1_")]
    [InlineData("plk1_!!!!")]
    [InlineData("plk1_eyJwIjoibGFiIn0")]
    public void Malformed_tokens_get_a_clear_error(string text)
    {
        var e = Assert.Throws<PoolSecurityException>(() => JoinToken.Parse(text));
        Assert.Contains("token", e.Message);
    }
}
