using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Potluck.Security;

[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Potluck.Security.Tests;

public sealed class PoolAuthorityTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("potluck-ca-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string Dir(string name) => Path.Combine(_root, name);

    [Fact]
    public void Create_writes_a_private_key_and_loads_back_with_the_same_fingerprint()
    {
        using var created = PoolAuthority.Create(Dir("pool"), "lab");
        Assert.Equal(64, created.Fingerprint.Length);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(Dir("pool"), PoolAuthority.KeyFile)));
        using var loaded = PoolAuthority.LoadOrCreate(Dir("pool"), "lab");
        Assert.Equal(created.Fingerprint, loaded.Fingerprint);
        Assert.Equal("lab", loaded.PoolId);
        Assert.Throws<PoolSecurityException>(() => PoolAuthority.Create(Dir("pool"), "lab"));
        Assert.Throws<PoolSecurityException>(() => PoolAuthority.Load(Dir("pool"), "other-pool"));
    }

    [Fact]
    public void An_issued_member_is_trusted_with_its_identity_and_refused_once_revoked()
    {
        using var authority = PoolAuthority.Create(Dir("pool"), "lab");
        using var member = authority.IssueCredential(PoolIdentity.Create("lab", PoolRole.Member, "node-1"));
        var result = authority.Trust.ValidateMember(member.Certificate);
        Assert.True(result.Trusted, result.Reason);
        Assert.Equal(new PoolIdentity("lab", PoolRole.Member, "node-1"), result.Identity);
        Assert.True(member.RenewAt < member.NotAfter && member.RenewAt > member.NotBefore);

        Assert.True(authority.Revocations.Revoke("node-1"));
        var refused = authority.Trust.ValidateMember(member.Certificate);
        Assert.False(refused.Trusted);
        Assert.Contains("revoked", refused.Reason);
        // Persisted: a restarted gateway still refuses it, and will not issue it a new certificate.
        using var reloaded = PoolAuthority.Load(Dir("pool"));
        Assert.True(reloaded.Revocations.IsRevoked("node-1"));
        Assert.Throws<PoolSecurityException>(() => reloaded.IssueCredential(PoolIdentity.Create("lab", PoolRole.Member, "node-1")));
    }

    [Fact]
    public void Certificates_of_another_pool_self_signed_ones_and_the_CA_itself_are_refused()
    {
        using var ours = PoolAuthority.Create(Dir("ours"), "lab");
        using var theirs = PoolAuthority.Create(Dir("theirs"), "lab");
        using var foreign = theirs.IssueCredential(PoolIdentity.Create("lab", PoolRole.Member, "rogue"));
        Assert.False(ours.Trust.ValidateMember(foreign.Certificate).Trusted);

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=rogue", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(PoolCertificates.SubjectAlternativeNames([new Uri("potluck://lab/member/rogue")]));
        using var selfSigned = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddHours(1));
        Assert.False(ours.Trust.ValidateMember(selfSigned).Trusted);
        Assert.False(ours.Trust.ValidateMember(ours.Certificate).Trusted);
        Assert.False(ours.Trust.ValidateMember(null).Trusted);
    }

    [Fact]
    public void Volunteers_are_not_members_and_expired_certificates_are_refused()
    {
        using var authority = PoolAuthority.Create(Dir("pool"), "lab");
        using var volunteer = authority.IssueCredential(PoolIdentity.Create("lab", PoolRole.Volunteer, "v1"));
        Assert.False(authority.Trust.ValidateMember(volunteer.Certificate).Trusted);
        Assert.True(authority.Trust.Validate(volunteer.Certificate, PoolRole.Member, PoolRole.Volunteer).Trusted);

        using var member = authority.IssueCredential(PoolIdentity.Create("lab", PoolRole.Member, "n1"), TimeSpan.FromHours(1));
        var later = new PoolTrust(authority.Certificate, "lab", authority.Revocations, new FixedClock(DateTimeOffset.UtcNow.AddHours(2)));
        var expired = later.ValidateMember(member.Certificate);
        Assert.False(expired.Trusted);
    }

    [Fact]
    public void A_credential_round_trips_through_its_directory_with_a_private_key_file()
    {
        using var authority = PoolAuthority.Create(Dir("pool"), "lab");
        using var issued = authority.IssueCredential(PoolIdentity.Create("lab", PoolRole.Member, "n1"));
        issued.Save(Dir("identity"));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(Dir("identity"), MemberCredential.KeyFile)));
        using var loaded = MemberCredential.Load(Dir("identity"));
        Assert.Equal(issued.Identity, loaded.Identity);
        Assert.True(loaded.Certificate.HasPrivateKey);
        Assert.Equal(authority.Fingerprint, loaded.AuthorityFingerprint);
        Assert.True(authority.Trust.ValidateMember(loaded.Certificate).Trusted);
        Assert.Throws<PoolSecurityException>(() => MemberCredential.Load(Dir("nothing-here")));
    }

    [Fact]
    public void An_operator_supplied_RSA_CA_without_a_pool_name_loads_and_issues()
    {
        // What Helm's genCA gives: an RSA CA with no potluck:// name; the pool id then comes from configuration.
        using var rsa = RSA.Create(2048);
        var request = new CertificateRequest("CN=helm-ca", rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign, true));
        using var ca = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddYears(1));
        Directory.CreateDirectory(Dir("helm"));
        File.WriteAllText(Path.Combine(Dir("helm"), PoolAuthority.CertificateFile), ca.ExportCertificatePem());
        File.WriteAllText(Path.Combine(Dir("helm"), PoolAuthority.KeyFile), rsa.ExportRSAPrivateKeyPem());
        Assert.Throws<PoolSecurityException>(() => PoolAuthority.Load(Dir("helm")));
        using var authority = PoolAuthority.Load(Dir("helm"), "k8s");
        using var member = authority.IssueCredential(PoolIdentity.Create("k8s", PoolRole.Member, "node-a"));
        Assert.True(authority.Trust.ValidateMember(member.Certificate).Trusted);
        var signature = authority.SignTicket("claims"u8);
        Assert.True(authority.Trust.VerifyTicket("claims"u8, signature));
    }

    [Fact]
    public void Ticket_signatures_verify_only_for_the_signed_bytes_and_this_CA()
    {
        using var authority = PoolAuthority.Create(Dir("pool"), "lab");
        using var other = PoolAuthority.Create(Dir("other"), "lab");
        var claims = RandomNumberGenerator.GetBytes(200);
        var signature = authority.SignTicket(claims);
        Assert.True(authority.Trust.VerifyTicket(claims, signature));
        Assert.False(other.Trust.VerifyTicket(claims, signature));
        claims[17] ^= 1;
        Assert.False(authority.Trust.VerifyTicket(claims, signature));
        Assert.False(authority.Trust.VerifyTicket(claims, []));
    }

    [Theory]
    [InlineData("potluck://lab/member/node-1", true)]
    [InlineData("potluck://lab/volunteer/v-2", true)]
    [InlineData("potluck://lab/admin/node-1", false)]
    [InlineData("potluck://lab/member/node/1", false)]
    [InlineData("potluck://lab/member/", false)]
    [InlineData("https://lab/member/node-1", false)]
    [InlineData("potluck://lab/member/node-1?x=1", false)]
    public void Identity_uris_parse_strictly(string text, bool valid)
    {
        Assert.Equal(valid, PoolIdentity.TryParse(new Uri(text), out var identity));
        if (valid) Assert.Equal(text, identity.ToUri().ToString());
    }

    internal sealed class FixedClock(DateTimeOffset now) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => now;
    }
}
