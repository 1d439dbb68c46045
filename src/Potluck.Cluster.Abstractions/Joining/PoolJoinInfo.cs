using System.Text.Json;
using System.Text.Json.Serialization;

namespace Potluck.Cluster.Joining;

/// <summary>
/// What a member needs to join a pool, served by the gateway's pool endpoint at <see cref="Path"/> to holders of a
/// pool certificate only: the model the pool serves (a node with another file must refuse), how to reach membership
/// (cluster id, seed), and who holds which layers with what load (so a node without --layers can choose its span).
/// </summary>
public sealed record PoolJoinInfo(JoinModel Model, string ClusterId, JoinMembership Membership, IReadOnlyList<JoinSpan> Spans)
{
    /// <summary>The pool endpoint's path for this document (mutual TLS with a member certificate).</summary>
    public const string Path = "/api/pool/join";

    public string ToJson() => JsonSerializer.Serialize(this, PoolJoinJsonContext.Default.PoolJoinInfo);

    public static Task SerializeAsync(Stream destination, PoolJoinInfo info, CancellationToken ct) =>
        JsonSerializer.SerializeAsync(destination, info, PoolJoinJsonContext.Default.PoolJoinInfo, ct);

    /// <summary>Parses and checks a join document.</summary>
    /// <exception cref="FormatException">Not JSON, or a required field is missing or out of range.</exception>
    public static PoolJoinInfo Parse(string json)
    {
        PoolJoinInfo? info;
        try
        {
            info = JsonSerializer.Deserialize(json, PoolJoinJsonContext.Default.PoolJoinInfo);
        }
        catch (JsonException e)
        {
            throw new FormatException($"not a pool join document: {e.Message}", e);
        }
        // System.Text.Json leaves missing constructor arguments null, so check what the node relies on.
        if (info is null) throw new FormatException("not a pool join document: empty");
        if (info.Model is null || string.IsNullOrWhiteSpace(info.Model.Id) || info.Model.Layers < 1)
            throw new FormatException("the join document has no model id and layer count");
        if (info.Membership is null || !JoinMembership.KnownKinds.Contains(info.Membership.Kind))
            throw new FormatException($"the join document's membership kind '{info.Membership?.Kind}' is not one of {string.Join(", ", JoinMembership.KnownKinds)}");
        if (info.Membership.Kind == JoinMembership.Development && string.IsNullOrWhiteSpace(info.Membership.Seed))
            throw new FormatException("the join document names development membership without a seed silo");
        if (string.IsNullOrWhiteSpace(info.ClusterId)) throw new FormatException("the join document has no cluster id");
        var spans = info.Spans ?? [];
        foreach (var span in spans)
        {
            if (span is null || span.Start < 0 || span.End <= span.Start || span.End > info.Model.Layers)
                throw new FormatException($"the join document lists a span outside the model's {info.Model.Layers} layers");
        }
        return info with { Spans = spans };
    }
}

/// <summary>The model a pool serves: <see cref="Id"/> is the hash of the GGUF header and tensor index.</summary>
public sealed record JoinModel(string Id, string Name, int Layers, string Architecture);

/// <summary>
/// How silos of this pool find each other: development clustering through one seed silo (HOST:PORT), or
/// Redis (the joining node needs --redis; the connection string may hold a password, so it is not published).
/// </summary>
public sealed record JoinMembership(string Kind, string? Seed)
{
    public const string Development = "development";
    public const string Redis = "redis";
    public static readonly IReadOnlyList<string> KnownKinds = [Development, Redis];
}

/// <summary>
/// One span on one node as the gateway sees it now, with its load. <see cref="Joining"/> marks a node that
/// announced this span and is still loading it: not healthy (it serves nothing yet), but a node choosing
/// at the same moment counts the span as taken. Documents from older gateways have no such entries.
/// </summary>
public sealed record JoinSpan(
    string NodeId,
    string Endpoint,
    int Start,
    int End,
    bool Healthy,
    int OpenSessions,
    double StepsPerSecond,
    long FreeKvTokens,
    long KvBudgetTokens,
    double MsPerToken,
    bool Joining = false);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, WriteIndented = false)]
[JsonSerializable(typeof(PoolJoinInfo))]
[JsonSerializable(typeof(JoinAnnouncement))]
[JsonSerializable(typeof(JoinAnnouncementAccepted))]
[JsonSerializable(typeof(PublicJoinInfo))]
[JsonSerializable(typeof(EnrollRequest))]
[JsonSerializable(typeof(EnrollResponse))]
internal sealed partial class PoolJoinJsonContext : JsonSerializerContext;
