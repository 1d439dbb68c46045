using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Potluck.Security.Tests;

/// <summary>The pure parts of admission: enrolment by CSR, pinning to a token's CA, revocation reloads.</summary>
public sealed class AdmissionTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("potluck-admission-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void A_csr_gets_a_certificate_for_the_identity_the_authority_chose_and_the_key_stays_with_the_member()
    {
        using var authority = PoolAuthority.Create(Path.Combine(_root, "ca"), "lab");
        var identity = PoolIdentity.Create("lab", PoolRole.Volunteer, "box-1");
        var (key, request) = MemberCredential.CreateRequest(identity);
        using (key)
        {
            // The subject of the request is ignored: the identity is the authority's (from the token's role).
            using var issued = authority.IssueForRequest(identity, request);
            Assert.False(issued.HasPrivateKey);
            using var credential = MemberCredential.FromIssued(PoolCertificates.ToPem(issued), PoolCertificates.ToPem(authority.Certificate), key);
            Assert.Equal(identity, credential.Identity);
            Assert.True(authority.Trust.Validate(credential.Certificate, PoolRole.Volunteer).Trusted);
            Assert.False(authority.Trust.ValidateMember(credential.Certificate).Trusted);
            // Another key does not fit the certificate.
            using var other = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            Assert.Throws<PoolSecurityException>(() => MemberCredential.FromIssued(PoolCertificates.ToPem(issued), PoolCertificates.ToPem(authority.Certificate), other));
        }
        // A tampered request fails its signature check.
        var (key2, tampered) = MemberCredential.CreateRequest(identity);
        key2.Dispose();
        tampered[^5] ^= 0x40;
        Assert.Throws<PoolSecurityException>(() => authority.IssueForRequest(identity, tampered));
        Assert.Throws<PoolSecurityException>(() => authority.IssueForRequest(identity, [0x30, 0x03, 0x02, 0x01, 0x01]));
        authority.Revocations.Revoke("box-1");
        var (key3, fresh) = MemberCredential.CreateRequest(identity);
        key3.Dispose();
        Assert.Throws<PoolSecurityException>(() => authority.IssueForRequest(identity, fresh));
    }

    [Fact]
    public void Pinning_accepts_only_the_tokens_ca_and_a_member_certificate_of_it()
    {
        using var authority = PoolAuthority.Create(Path.Combine(_root, "ca"), "lab");
        using var impostor = PoolAuthority.Create(Path.Combine(_root, "impostor"), "lab");
        var token = authority.Tokens.Create(TimeSpan.FromHours(1), 1, PoolRole.Member);

        using var pinned = PoolPinning.PinnedAuthority(PoolCertificates.ToPem(authority.Certificate), token.AuthorityFingerprint, out var ok);
        Assert.NotNull(pinned);
        Assert.Null(ok);
        Assert.Null(PoolPinning.PinnedAuthority(PoolCertificates.ToPem(impostor.Certificate), token.AuthorityFingerprint, out var reason));
        Assert.Contains("is not the one the token names", reason);
        Assert.Null(PoolPinning.PinnedAuthority("not pem", token.AuthorityFingerprint, out _));

        using var gateway = authority.IssueCredential(PoolIdentity.Create("lab", PoolRole.Member, "gateway-1"));
        using var fake = impostor.IssueCredential(PoolIdentity.Create("lab", PoolRole.Member, "gateway-1"));
        using var volunteer = authority.IssueCredential(PoolIdentity.Create("lab", PoolRole.Volunteer, "v"));
        Assert.True(PoolPinning.ValidateServer(gateway.Certificate, pinned!, "lab").Trusted);
        Assert.False(PoolPinning.ValidateServer(fake.Certificate, pinned!, "lab").Trusted);
        Assert.False(PoolPinning.ValidateServer(volunteer.Certificate, pinned!, "lab").Trusted);
        Assert.False(PoolPinning.ValidateServer(gateway.Certificate, pinned!, "other").Trusted);
    }

    [Fact]
    public void Reload_picks_up_another_processes_revocations_and_raises_changed_once()
    {
        var directory = Path.Combine(_root, "ca");
        using var gateway = PoolAuthority.Create(directory, "lab");
        var changes = new List<IReadOnlySet<string>>();
        gateway.Revocations.Changed += changes.Add;
        Assert.False(gateway.Revocations.Reload());

        // `potluck pool revoke` in another process: its own instance writes the file.
        using (var cli = PoolAuthority.Load(directory, "lab")) Assert.True(cli.Revocations.Revoke("node-7"));
        Assert.True(gateway.Revocations.Reload());
        Assert.False(gateway.Revocations.Reload());
        Assert.True(gateway.Revocations.IsRevoked("node-7"));
        Assert.Single(changes);
        using var node7 = PoolAuthority.Load(directory, "lab");
        Assert.Throws<PoolSecurityException>(() => node7.IssueCredential(PoolIdentity.Create("lab", PoolRole.Member, "node-7")));

        File.WriteAllText(Path.Combine(directory, PoolAuthority.RevokedFile), "{not json");
        Assert.Throws<PoolSecurityException>(() => gateway.Revocations.Reload());
        Assert.True(gateway.Revocations.IsRevoked("node-7"));
        Assert.False(new RevocationList(["x"]).Reload());
    }

    [Fact]
    public void A_credential_made_from_a_request_survives_save_and_load()
    {
        using var authority = PoolAuthority.Create(Path.Combine(_root, "ca"), "lab");
        var identity = PoolIdentity.Create("lab", PoolRole.Member, "n1");
        var (key, request) = MemberCredential.CreateRequest(identity);
        using (key)
        {
            using var issued = authority.IssueForRequest(identity, request);
            using var credential = MemberCredential.FromIssued(PoolCertificates.ToPem(issued), PoolCertificates.ToPem(authority.Certificate), key);
            credential.Save(Path.Combine(_root, "id"));
        }
        using var loaded = MemberCredential.Load(Path.Combine(_root, "id"));
        Assert.Equal(identity, loaded.Identity);
        Assert.Equal(authority.Fingerprint, loaded.AuthorityFingerprint);
        Assert.True(authority.Trust.ValidateMember(loaded.Certificate).Trusted);
        var lifetime = loaded.NotAfter - loaded.NotBefore - PoolCertificates.ClockSkew;
        Assert.InRange(lifetime, PoolCertificates.DefaultMemberLifetime - TimeSpan.FromMinutes(1), PoolCertificates.DefaultMemberLifetime + TimeSpan.FromMinutes(1));
    }
}
