using System.Globalization;
using System.Text;
using Potluck.Hosting;
using Potluck.Security;

namespace Potluck.Node.Hosting;

/// <summary>
/// A node's default id, unique on this machine even when nodes share one $POTLUCK_HOME: the id of a pool certificate
/// this machine holds (a node's id is its certificate's), else the first free HOSTNAME-N. "Free" means no running
/// process holds the exclusive lock on $POTLUCK_HOME/nodes/ID.lock; the lock is held for this process's life (the
/// OS drops it when the process ends, even on SIGKILL), so a restart takes the same id again.
/// </summary>
public static class NodeIdClaim
{
    /// <summary>Locks of the ids this process claimed; never closed, so they last as long as the process.</summary>
    private static readonly List<FileStream> Held = [];
    private static readonly Lock Gate = new();
    private const int MaxNumber = 999;

    /// <summary>Claims an id for a node of pool <paramref name="poolId"/>; see the class summary.</summary>
    /// <exception cref="IOException">The lock directory cannot be written, or every candidate is taken.</exception>
    public static string Claim(PoolSecuritySettings security, string poolId, string? lockDirectory = null, string? hostName = null)
    {
        var directory = lockDirectory ?? Path.Combine(PotluckHome.Directory, "nodes");
        Directory.CreateDirectory(directory);
        foreach (var held in HeldCertificateIds(security, poolId))
            if (TryLock(directory, held)) return held;
        var prefix = BaseName(hostName ?? Environment.MachineName);
        for (var n = 1; n <= MaxNumber; n++)
        {
            var id = $"{prefix}-{n.ToString(CultureInfo.InvariantCulture)}";
            // An id with another pool certificate here stays that node's; a fresh node never takes it over.
            if (Directory.Exists(security.IdentityDirectoryFor(poolId, id)) && security.IdentityDirectory is null) continue;
            if (TryLock(directory, id)) return id;
        }
        throw new IOException($"every node id {prefix}-1 to {prefix}-{MaxNumber} is held by a running process (locks in {directory}); pass --node-id");
    }

    /// <summary>Whether a running process holds <paramref name="id"/> (tests, diagnostics).</summary>
    public static bool IsHeld(string id, string? lockDirectory = null)
    {
        var path = LockPath(lockDirectory ?? Path.Combine(PotluckHome.Directory, "nodes"), id);
        if (!File.Exists(path)) return false;
        try
        {
            using var probe = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
            return false;
        }
        catch (IOException)
        {
            return true;
        }
    }

    /// <summary>The host name as a valid id prefix (letters, digits, '-', '_', '.'; room left for "-N").</summary>
    public static string BaseName(string hostName)
    {
        var text = new StringBuilder();
        foreach (var c in hostName.Trim().ToLowerInvariant())
            text.Append(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '-');
        var name = text.ToString().TrimStart('-', '_', '.');
        if (name.Length > 58) name = name[..58];
        return name.Length == 0 ? "node" : name;
    }

    private static IEnumerable<string> HeldCertificateIds(PoolSecuritySettings security, string poolId)
    {
        var ids = new List<string>();
        try
        {
            if (security.IdentityDirectory is { Length: > 0 } explicitDirectory)
            {
                // One given identity directory: that certificate is this node, whoever else runs.
                if (MemberCredential.Exists(explicitDirectory))
                {
                    using var credential = MemberCredential.Load(explicitDirectory);
                    ids.Add(credential.Identity.NodeId);
                }
                return ids;
            }
            var root = Path.Combine(PotluckHome.Directory, "identity", poolId);
            if (!Directory.Exists(root)) return ids;
            foreach (var directory in Directory.GetDirectories(root).Order(StringComparer.Ordinal))
            {
                if (!MemberCredential.Exists(directory)) continue;
                using var credential = MemberCredential.Load(directory);
                if (PoolIdentity.IsValidId(credential.Identity.NodeId)) ids.Add(credential.Identity.NodeId);
            }
        }
        catch (Exception e) when (e is PoolSecurityException or IOException or UnauthorizedAccessException)
        {
            // An unreadable certificate is not a claim; the node falls back to a fresh id and says so later if it needs one.
        }
        return ids;
    }

    private static bool TryLock(string directory, string id)
    {
        lock (Gate)
        {
            FileStream stream;
            try
            {
                // FileShare.None is an exclusive flock(2) on Linux: a second process (or this one again) is refused.
                stream = new FileStream(LockPath(directory, id), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException)
            {
                return false;
            }
            // For whoever looks: which process holds it.
            stream.SetLength(0);
            stream.Write(Encoding.UTF8.GetBytes($"{Environment.ProcessId}\n"));
            stream.Flush();
            Held.Add(stream);
            return true;
        }
    }

    private static string LockPath(string directory, string id) => Path.Combine(directory, $"{id}.lock");
}
