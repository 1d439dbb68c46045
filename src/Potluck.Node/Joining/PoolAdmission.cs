using System.Text.Json;
using System.Text.Json.Nodes;
using Potluck.Hosting;
using Potluck.Security;

namespace Potluck.Node.Joining;

/// <summary>
/// Where a node's credential comes from before it joins: its identity directory (it joined before; no token needed),
/// this machine's pool directory (the local-machine path: `serve`'s children, a lab machine holding the CA), or an
/// invite token redeemed at the gateway's pool endpoint. A token-enrolled credential is saved with pool.json (the
/// pool endpoint's URL), so the node renews from there and restarts without a token.
/// </summary>
public static class PoolAdmission
{
    public const string PointerFile = "pool.json";

    /// <summary>
    /// The node id a credential already held on this machine names, when the operator gave none: "a node's id is its
    /// certificate's". With an explicit identity directory, that credential's id; else the single credential under
    /// $POTLUCK_HOME/identity/&lt;pool&gt;/; null when there is none or more than one.
    /// </summary>
    public static string? HeldNodeId(PoolSecuritySettings settings, string poolId)
    {
        try
        {
            if (settings.IdentityDirectory is { Length: > 0 } explicitDirectory)
            {
                if (!MemberCredential.Exists(explicitDirectory)) return null;
                using var held = MemberCredential.Load(explicitDirectory);
                return held.Identity.NodeId;
            }
            var root = Path.Combine(PotluckHome.Directory, "identity", poolId);
            if (!Directory.Exists(root)) return null;
            var found = Directory.GetDirectories(root).Where(MemberCredential.Exists).ToArray();
            if (found.Length != 1) return null;
            using var credential = MemberCredential.Load(found[0]);
            return credential.Identity.NodeId;
        }
        catch (Exception e) when (e is PoolSecurityException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>True when this node can get a certificate without a token (it holds one, or this machine holds the pool CA).</summary>
    public static bool HasLocalCredential(PoolSecuritySettings settings, string poolId, string nodeId) =>
        MemberCredential.Exists(settings.IdentityDirectoryFor(poolId, nodeId)) || PoolAuthority.Exists(settings.PoolDirectoryFor(poolId));

    /// <summary>Saves a token-enrolled credential and the pool endpoint it came from.</summary>
    public static void Save(PoolSecuritySettings settings, MemberCredential credential, Uri poolUrl)
    {
        var directory = settings.IdentityDirectoryFor(credential.Identity.PoolId, credential.Identity.NodeId);
        credential.Save(directory);
        SavePoolUrl(directory, poolUrl);
    }

    public static void SavePoolUrl(string directory, Uri poolUrl)
    {
        var json = new JsonObject { ["version"] = 1, ["pool_url"] = poolUrl.ToString() }.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
        var temporary = Path.Combine(directory, $".{PointerFile}.{Environment.ProcessId}.tmp");
        File.WriteAllText(temporary, json + "\n");
        File.Move(temporary, Path.Combine(directory, PointerFile), overwrite: true);
    }

    /// <summary>The pool endpoint a token-enrolled node renews at; null when the directory has no (readable) pool.json.</summary>
    public static Uri? ReadPoolUrl(string directory)
    {
        var path = Path.Combine(directory, PointerFile);
        try
        {
            if (!File.Exists(path) || new FileInfo(path).Length > 64 * 1024) return null;
            var url = JsonNode.Parse(File.ReadAllText(path))?["pool_url"]?.GetValue<string>();
            return Uri.TryCreate(url, UriKind.Absolute, out var uri) && uri.Scheme == "https" ? uri : null;
        }
        catch (Exception e) when (e is JsonException or IOException or InvalidOperationException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
