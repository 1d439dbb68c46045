using System.Collections.Concurrent;
using Grpc.Net.Client;
using Orleans.Hosting;
using Potluck.Hosting;
using Potluck.Protocol;
using Potluck.Security;

namespace Potluck.Testing;

/// <summary>
/// One pool CA per pool id per test run, in the run's temp folder: in-process hosts, node processes and test
/// clients of the same pool id share it, so they trust each other the way members of one pool do.
/// </summary>
public static class TestPki
{
    /// <summary>The cluster id hosts use when a test does not set one.</summary>
    public const string DefaultPool = "potluck";

    private static readonly string Root = Path.Combine(Path.GetTempPath(), $"potluck-test-pki-{System.Environment.ProcessId}");
    private static readonly Lock Gate = new();

    /// <summary>The CA holder's directory of <paramref name="poolId"/>, the authority created on first use.</summary>
    public static string PoolDirectory(string poolId = DefaultPool)
    {
        var directory = Path.Combine(Root, poolId);
        EnsureAuthority(directory, poolId);
        return directory;
    }

    /// <summary>
    /// What `potluck pool init` does for a POTLUCK_HOME: the pool's CA in its default place, so nodes started there
    /// before any gateway (which would create it) issue themselves certificates from it.
    /// </summary>
    public static void InitPool(string potluckHome, string poolId = DefaultPool)
    {
        EnsureAuthority(Path.Combine(potluckHome, "pools", poolId), poolId);
    }

    private static void EnsureAuthority(string directory, string poolId)
    {
        lock (Gate)
        {
            if (!PoolAuthority.Exists(directory)) PoolAuthority.Create(directory, poolId).Dispose();
        }
    }

    /// <summary>Security settings of a host of <paramref name="poolId"/>: the gateway holds the test CA, nodes issue from it.</summary>
    public static PoolSecuritySettings Settings(string poolId = DefaultPool) => new(PoolDirectory: PoolDirectory(poolId));

    /// <summary>The same for a child process (Potluck__Security__PoolDirectory).</summary>
    public static IReadOnlyDictionary<string, string> Environment(string poolId = DefaultPool) =>
        new Dictionary<string, string> { ["Potluck__Security__PoolDirectory"] = PoolDirectory(poolId) };

    public static PoolAuthority Authority(string poolId = DefaultPool) => PoolAuthority.Load(PoolDirectory(poolId), poolId);

    /// <summary>A member credential of <paramref name="poolId"/> for a test acting as a member (dialling a node directly).</summary>
    public static MemberCredential Credential(string nodeId = "test-client", string poolId = DefaultPool)
    {
        using var authority = Authority(poolId);
        return authority.IssueCredential(PoolIdentity.Create(authority.PoolId, PoolRole.Member, nodeId));
    }

    /// <summary>The node id tests present when they dial members: a member certificate of the run's CA.</summary>
    public const string TestClientId = "test-client";

    private static readonly ConcurrentDictionary<string, Lazy<TestMember>> Members = new(StringComparer.Ordinal);

    /// <summary>A test client's standing in <paramref name="poolId"/>: its member credential and the pool's trust (one per pool per run).</summary>
    public static (RotatingCredential Credential, PoolTrust Trust) Member(string poolId = DefaultPool)
    {
        var member = Members.GetOrAdd(poolId, static id => new Lazy<TestMember>(() => TestMember.Create(id))).Value;
        return (member.Credential, member.Trust);
    }

    /// <summary>
    /// The one way tests dial a node's data plane: mutual TLS with a test-client certificate of the run's CA, accepting
    /// only the member <paramref name="expectedNodeId"/> (the same <see cref="MemberChannels"/> the hosts use). The
    /// caller owns the channel.
    /// </summary>
    public static GrpcChannel Channel(string endpoint, string expectedNodeId, string poolId = DefaultPool, int maxMessageBytes = 256 * 1024 * 1024)
    {
        var (credential, trust) = Member(poolId);
        using var factory = new MemberChannels(credential, trust, maxMessageBytes, capacity: 1);
        return factory.CreateOwned(endpoint, expectedNodeId);
    }

    /// <summary>
    /// An HTTP/2 client for a node's data-plane port (its /healthz), over mutual TLS as a test member, accepting only
    /// the member <paramref name="expectedNodeId"/>.
    /// </summary>
    public static HttpClient HttpClient(string expectedNodeId, string poolId = DefaultPool)
    {
        var (credential, trust) = Member(poolId);
        var handler = new SocketsHttpHandler
        {
            SslOptions = new System.Net.Security.SslClientAuthenticationOptions
            {
                LocalCertificateSelectionCallback = (_, _, _, _, _) => credential.Current.Certificate,
                RemoteCertificateValidationCallback = (_, certificate, _, _) => trust.ValidateMember(certificate) is { Trusted: true } r && r.Identity.NodeId == expectedNodeId,
            },
        };
        return new HttpClient(handler)
        {
            DefaultRequestVersion = System.Net.HttpVersion.Version20,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Timeout = TimeSpan.FromSeconds(10),
        };
    }

    /// <summary>An Orleans client of a test pool: mutual TLS with the test-client certificate, like every silo requires.</summary>
    public static IClientBuilder UseTestPoolTls(this IClientBuilder client, string poolId = DefaultPool)
    {
        var (credential, trust) = Member(poolId);
        return client.UsePoolTls(credential, trust);
    }

    private sealed record TestMember(RotatingCredential Credential, PoolTrust Trust)
    {
        public static TestMember Create(string poolId)
        {
            var credential = TestPki.Credential(TestClientId, poolId);
            return new TestMember(new RotatingCredential(credential), new PoolTrust(credential.Authority, credential.Identity.PoolId, new RevocationList()));
        }
    }
}
