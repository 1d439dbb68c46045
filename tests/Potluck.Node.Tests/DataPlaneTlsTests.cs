using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.DependencyInjection;
using Potluck.Hosting;
using Potluck.Inference.Gguf;
using Potluck.Protocol;
using Potluck.Protocol.V1;
using Potluck.Security;
using GrpcStage = Potluck.Protocol.V1.Stage;

namespace Potluck.Node.Tests;

/// <summary>Two real nodes (a chain over the small model) in this process, serving the data plane over mutual TLS.</summary>
public sealed class TlsPoolFixture : IAsyncLifetime
{
    public InProcessPool Pool { get; private set; } = null!;

    public async Task InitializeAsync() =>
        Pool = await InProcessPool.StartAsync(TestModels.Small(GgmlType.Q8_0), [(0, 2), (2, 4)], kvBudgetTokens: 4096, prefix: "tls");

    public Task DisposeAsync() => Pool.DisposeAsync().AsTask();
}

/// <summary>
/// The data plane's mutual TLS: only a client certificate of this pool's CA naming a member that is not revoked gets
/// past the handshake; plaintext, no certificate, another CA's certificate, a self-signed one with a pool SAN, and a
/// volunteer's are refused, and the node keeps serving members. A member also refuses a peer that is not the node
/// it dialled.
/// </summary>
[ProcessTest]
public sealed class DataPlaneTlsTests(TlsPoolFixture fixture) : IClassFixture<TlsPoolFixture>
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(10);
    private InProcessPool Pool => fixture.Pool;
    private string FirstEndpoint => Pool.Options[0].GrpcEndpoint;
    private int FirstPort => Pool.Options[0].GrpcPort;

    [Fact]
    public void Nodes_advertise_https_endpoints()
    {
        Assert.Equal($"https://127.0.0.1:{FirstPort}", FirstEndpoint);
    }

    [Fact]
    public async Task A_member_is_served_and_a_stage_dials_the_next_one_over_mutual_tls()
    {
        using var channel = Channels.For(Pool.Options[0]);
        var description = await new GrpcStage.StageClient(channel).DescribeAsync(new DescribeRequest(), deadline: DateTime.UtcNow + Deadline);
        Assert.Equal("tls-0", description.NodeId);
        // The open reaches the second stage only if tls-0 dialled tls-1 with its member certificate and checked tls-1's.
        await using var client = await Channels.OpenAsync(channel, Pool.OpenMessage("tls-chain", Pool.Host(0).ModelId, 16), Pool.Host(0).Width);
        Assert.Equal(["tls-0", "tls-1"], client.Opened.Stages.Select(s => s.NodeId));
        await client.CloseAsync(Deadline);
    }

    [Fact]
    public async Task Plaintext_h2c_is_refused()
    {
        using var plain = GrpcChannel.ForAddress($"http://127.0.0.1:{FirstPort}");
        await Assert.ThrowsAsync<RpcException>(() => DescribeAsync(plain));
        using var http = new HttpClient { DefaultRequestVersion = System.Net.HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact, Timeout = Deadline };
        await Assert.ThrowsAsync<HttpRequestException>(() => http.GetStringAsync($"http://127.0.0.1:{FirstPort}/healthz"));
        await AssertStillServesAsync();
    }

    [Fact]
    public async Task A_client_without_a_certificate_is_refused()
    {
        using var channel = Dial(clientCertificate: null);
        await Assert.ThrowsAsync<RpcException>(() => DescribeAsync(channel));
        await AssertStillServesAsync();
    }

    [Fact]
    public async Task A_member_certificate_of_another_pool_ca_is_refused()
    {
        // Same pool id, same node id as a real member: only the CA differs.
        var directory = Path.Combine(Path.GetTempPath(), $"potluck-other-ca-{Guid.NewGuid():N}");
        try
        {
            using var other = PoolAuthority.Create(directory, TestPki.DefaultPool);
            using var impostor = other.IssueCredential(PoolIdentity.Create(TestPki.DefaultPool, PoolRole.Member, "tls-1"));
            using var channel = Dial(impostor.Certificate);
            await Assert.ThrowsAsync<RpcException>(() => DescribeAsync(channel));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
        await AssertStillServesAsync();
    }

    [Fact]
    public async Task A_self_signed_certificate_naming_a_member_is_refused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=intruder", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(PoolCertificates.SubjectAlternativeNames([PoolIdentity.Create(TestPki.DefaultPool, PoolRole.Member, "intruder").ToUri()]));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([PoolCertificates.ClientAuth, PoolCertificates.ServerAuth], critical: false));
        using var selfSigned = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
        using var usable = X509CertificateLoader.LoadPkcs12(selfSigned.Export(X509ContentType.Pkcs12), null);
        using var channel = Dial(usable);
        await Assert.ThrowsAsync<RpcException>(() => DescribeAsync(channel));
        await AssertStillServesAsync();
    }

    [Fact]
    public async Task A_volunteer_certificate_of_the_pool_is_refused_on_the_member_data_plane()
    {
        using var authority = TestPki.Authority();
        using var volunteer = authority.IssueCredential(PoolIdentity.Create(authority.PoolId, PoolRole.Volunteer, "volunteer-1"));
        using var channel = Dial(volunteer.Certificate);
        await Assert.ThrowsAsync<RpcException>(() => DescribeAsync(channel));
        await AssertStillServesAsync();
    }

    [Fact]
    public async Task A_revoked_member_is_refused_on_its_next_connection()
    {
        using var credential = TestPki.Credential("soon-revoked");
        using (var before = Dial(credential.Certificate))
            await DescribeAsync(before);
        var trust = Pool.Apps[0].Services.GetRequiredService<MemberSecurity>().Trust;
        trust.Revocations.Revoke("soon-revoked");
        try
        {
            using var after = Dial(credential.Certificate);
            await Assert.ThrowsAsync<RpcException>(() => DescribeAsync(after));
        }
        finally
        {
            trust.Revocations.Replace(new HashSet<string>());
        }
        await AssertStillServesAsync();
    }

    [Fact]
    public async Task A_member_refuses_a_peer_that_is_not_the_node_it_dialled()
    {
        var (credential, trust) = TestPki.Member();
        using var channels = new MemberChannels(credential, trust, 1 << 20);
        // tls-0's port, expecting tls-1: tls-0 is a trusted member, but not the node this hop names.
        var wrong = await Assert.ThrowsAsync<RpcException>(() => DescribeAsync(channels.Get(FirstEndpoint, "tls-1")));
        // The handshake fails on the caller's side (gRPC reports it as Internal or Unavailable): nothing is sent.
        Assert.Contains(wrong.StatusCode, new[] { StatusCode.Internal, StatusCode.Unavailable });
        await DescribeAsync(channels.Get(FirstEndpoint, "tls-0"));
    }

    private async Task AssertStillServesAsync()
    {
        using var channel = Channels.For(Pool.Options[0]);
        Assert.Equal("tls-0", (await DescribeAsync(channel)).NodeId);
    }

    private static async Task<StageDescription> DescribeAsync(GrpcChannel channel) =>
        await new GrpcStage.StageClient(channel).DescribeAsync(new DescribeRequest(), deadline: DateTime.UtcNow + Deadline);

    /// <summary>An https channel presenting <paramref name="clientCertificate"/> (or none) that trusts any server: only the node's check is tested.</summary>
    private GrpcChannel Dial(X509Certificate2? clientCertificate) => GrpcChannel.ForAddress(FirstEndpoint, new GrpcChannelOptions
    {
        HttpHandler = new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                LocalCertificateSelectionCallback = clientCertificate is null ? null : (_, _, _, _, _) => clientCertificate,
                RemoteCertificateValidationCallback = (_, _, _, _) => true,
            },
        },
    });
}
