using Potluck.Hosting;
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
        lock (Gate)
        {
            if (!PoolAuthority.Exists(directory)) PoolAuthority.Create(directory, poolId).Dispose();
        }
        return directory;
    }

    /// <summary>
    /// What `potluck pool init` does for a POTLUCK_HOME: the pool's CA in its default place, so nodes started there
    /// before any gateway (which would create it) issue themselves certificates from it.
    /// </summary>
    public static void InitPool(string potluckHome, string poolId = DefaultPool)
    {
        var directory = Path.Combine(potluckHome, "pools", poolId);
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
}
