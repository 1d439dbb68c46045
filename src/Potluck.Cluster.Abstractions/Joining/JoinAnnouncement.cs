using System.Text.Json;

namespace Potluck.Cluster.Joining;

/// <summary>
/// A node telling the gateway, before it loads, which span it is about to serve (POST <see cref="Path"/>).
/// The gateway lists it as "joining" in /api/pool and /api/join until its shard reports or
/// <see cref="Lifetime"/> passes, so a node choosing at the same moment does not pick the same gap.
/// </summary>
public sealed record JoinAnnouncement(string NodeId, string ModelId, int Start, int End, string Endpoint)
{
    /// <summary>The pool endpoint's path for announcements (mutual TLS with a member certificate).</summary>
    public const string Path = "/api/pool/announce";

    /// <summary>
    /// How long an announcement counts when the node never reports (it crashed while loading). Loading a
    /// span of a large model from a cold disk takes a minute or so; longer would block a gap for nothing.
    /// </summary>
    public static readonly TimeSpan Lifetime = TimeSpan.FromMinutes(2);

    public string ToJson() => JsonSerializer.Serialize(this, PoolJoinJsonContext.Default.JoinAnnouncement);
}

/// <summary>The gateway's answer to an accepted announcement.</summary>
public sealed record JoinAnnouncementAccepted(string NodeId, string State, DateTime ExpiresAt)
{
    public string ToJson() => JsonSerializer.Serialize(this, PoolJoinJsonContext.Default.JoinAnnouncementAccepted);

    /// <exception cref="FormatException">Not this document.</exception>
    public static JoinAnnouncementAccepted Parse(string json)
    {
        try
        {
            var accepted = JsonSerializer.Deserialize(json, PoolJoinJsonContext.Default.JoinAnnouncementAccepted);
            if (accepted is null || string.IsNullOrEmpty(accepted.NodeId) || string.IsNullOrEmpty(accepted.State))
                throw new FormatException("not an announcement answer");
            return accepted;
        }
        catch (JsonException e)
        {
            throw new FormatException($"not an announcement answer: {e.Message}", e);
        }
    }
}
