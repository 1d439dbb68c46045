using System.Globalization;
using System.Security.Cryptography;
using Google.Protobuf;
using Potluck.Protocol.V1;
using Potluck.Security;

namespace Potluck.Protocol;

/// <summary>
/// Route tickets: the gateway (the pool CA holder) signs what one open may do (session id, the whole route, KV size,
/// resume or not, a short expiry) and every stage checks it before it reserves KV or dials anything. Only the CA can
/// sign, so a caller can neither pick the hops a stage dials (SSRF), reserve KV without the gateway, nor resume
/// (take over) a session id the gateway did not sign for.
/// </summary>
public static class RouteTickets
{
    /// <summary>
    /// Tickets are checked only when a stage opens, resumes or rebuilds (each stage opens its next within seconds),
    /// never per step: a short life keeps a ticket seen by a stage on the route from being replayed later, and
    /// every resume or re-route gets a fresh one anyway.
    /// </summary>
    public static readonly TimeSpan DefaultLifetime = TimeSpan.FromMinutes(2);

    /// <summary>Clocks of the gateway and the nodes may differ this much.</summary>
    public static readonly TimeSpan ClockSkew = TimeSpan.FromSeconds(30);

    /// <summary>No ticket is accepted for longer than this, whatever it claims.</summary>
    public static readonly TimeSpan MaxLifetime = TimeSpan.FromMinutes(10);

    /// <summary>Checked before parsing: a route of <see cref="MaxHops"/> hops with long endpoints fits easily.</summary>
    public const int MaxTicketBytes = 16 * 1024;

    /// <summary>Most stages a route may have (a model has at most this many layers in practice).</summary>
    public const int MaxHops = 128;

    /// <summary>
    /// A ticket for one open of <paramref name="sessionId"/> on <paramref name="route"/> (<c>route[0]</c> the first stage):
    /// the serialized <see cref="RouteTicket"/> for <see cref="OpenSession.Ticket"/>.
    /// </summary>
    public static ByteString Issue(PoolAuthority authority, string sessionId, IReadOnlyList<RouteHop> route, int maxTokens, bool resume,
        TimeSpan lifetime, TimeProvider? clock = null)
    {
        ArgumentNullException.ThrowIfNull(authority);
        if (route.Count == 0 || route.Count > MaxHops) throw new ArgumentException($"a route has 1 to {MaxHops} stages", nameof(route));
        if (lifetime <= TimeSpan.Zero || lifetime > MaxLifetime) throw new ArgumentOutOfRangeException(nameof(lifetime), $"a ticket lives up to {MaxLifetime}");
        var now = (clock ?? TimeProvider.System).GetUtcNow();
        var claims = new TicketClaims
        {
            PoolId = authority.PoolId,
            SessionId = sessionId,
            MaxTokens = maxTokens,
            IssuedUnixMs = now.ToUnixTimeMilliseconds(),
            ExpiresUnixMs = (now + lifetime).ToUnixTimeMilliseconds(),
            Resume = resume,
        };
        foreach (var hop in route) claims.Hops.Add(hop.Clone());
        var claimBytes = claims.ToByteArray();
        var ticket = new RouteTicket
        {
            Claims = UnsafeByteOperations.UnsafeWrap(claimBytes),
            Signature = UnsafeByteOperations.UnsafeWrap(authority.SignTicket(claimBytes)),
        };
        var bytes = ticket.ToByteString();
        if (bytes.Length > MaxTicketBytes) throw new ArgumentException($"the route's ticket would be {bytes.Length} bytes, over the {MaxTicketBytes}-byte limit", nameof(route));
        return bytes;
    }
}

/// <summary>A ticket check: null <see cref="Refusal"/> when the open may proceed; <see cref="Next"/> is the only hop the stage may dial.</summary>
public readonly record struct TicketVerdict(string? Refusal, RouteHop? Next)
{
    public bool Accepted => Refusal is null;

    internal static TicketVerdict Refuse(string why) => new(why, null);
}

/// <summary>
/// A stage's ticket check. The stage is <paramref name="nodeId"/> (its certificate's node id); the ticket must be
/// signed by the pool CA of <paramref name="trust"/> over the exact claims bytes received, be for that pool, be
/// current (with <see cref="RouteTickets.ClockSkew"/>), name the open's session id, max_tokens and resume flag,
/// contain this stage with the open's span, and list after it exactly the open's route tail. A stage after the first
/// also requires the caller's certificate to name the ticket's previous stage, so a member that saw a ticket on its
/// route cannot replay it to a stage it does not feed.
/// </summary>
public sealed class RouteTicketVerifier(PoolTrust trust, string nodeId, TimeProvider? clock = null)
{
    private readonly TimeProvider _clock = clock ?? trust.Clock;

    public string NodeId { get; } = nodeId;

    /// <param name="callerNodeId">The node id of the caller's pool certificate; null when the caller presented none
    /// (only a plaintext benchmark stage: member ports require certificates).</param>
    public TicketVerdict Verify(OpenSession open, string? callerNodeId = null)
    {
        var bytes = open.Ticket;
        if (bytes.IsEmpty) return TicketVerdict.Refuse("the open carries no route ticket (only routes signed by the pool's gateway are served)");
        if (bytes.Length > RouteTickets.MaxTicketBytes)
            return TicketVerdict.Refuse($"the route ticket is {bytes.Length} bytes, over the {RouteTickets.MaxTicketBytes}-byte limit");
        if (open.Next.Count >= RouteTickets.MaxHops)
            return TicketVerdict.Refuse($"the route has {open.Next.Count + 1} or more stages, over the {RouteTickets.MaxHops}-stage limit");

        RouteTicket ticket;
        try
        {
            ticket = RouteTicket.Parser.ParseFrom(bytes);
        }
        catch (InvalidProtocolBufferException)
        {
            return TicketVerdict.Refuse("the route ticket is not a RouteTicket message");
        }
        if (ticket.Claims.IsEmpty || ticket.Signature.IsEmpty) return TicketVerdict.Refuse("the route ticket has no claims or no signature");
        bool signed;
        try
        {
            // The bytes as received: a re-serialized copy could differ from what was signed.
            signed = trust.VerifyTicket(ticket.Claims.Span, ticket.Signature.Span);
        }
        catch (CryptographicException)
        {
            signed = false;
        }
        if (!signed) return TicketVerdict.Refuse($"the route ticket is not signed by the CA of pool {trust.PoolId}");

        TicketClaims claims;
        try
        {
            claims = TicketClaims.Parser.ParseFrom(ticket.Claims);
        }
        catch (InvalidProtocolBufferException)
        {
            return TicketVerdict.Refuse("the route ticket's claims are malformed");
        }
        if (!string.Equals(claims.PoolId, trust.PoolId, StringComparison.OrdinalIgnoreCase))
            return TicketVerdict.Refuse($"the route ticket is for pool '{claims.PoolId}', this node is of pool '{trust.PoolId}'");

        var now = _clock.GetUtcNow().ToUnixTimeMilliseconds();
        var skew = (long)RouteTickets.ClockSkew.TotalMilliseconds;
        if (claims.ExpiresUnixMs <= claims.IssuedUnixMs || claims.ExpiresUnixMs - claims.IssuedUnixMs > (long)RouteTickets.MaxLifetime.TotalMilliseconds)
            return TicketVerdict.Refuse($"the route ticket's lifetime ({claims.ExpiresUnixMs - claims.IssuedUnixMs} ms) is not in (0, {RouteTickets.MaxLifetime.TotalMinutes:F0} min]");
        if (now > claims.ExpiresUnixMs + skew)
            return TicketVerdict.Refuse($"the route ticket expired at {Time(claims.ExpiresUnixMs)} (this node's clock: {Time(now)})");
        if (claims.IssuedUnixMs > now + skew)
            return TicketVerdict.Refuse($"the route ticket is issued in the future, at {Time(claims.IssuedUnixMs)} (this node's clock: {Time(now)})");

        if (claims.SessionId != open.SessionId)
            return TicketVerdict.Refuse($"the route ticket is for session '{Clip(claims.SessionId)}', not '{Clip(open.SessionId)}'");
        if (claims.MaxTokens != open.MaxTokens)
            return TicketVerdict.Refuse($"the route ticket allows max_tokens {claims.MaxTokens}, the open asks {open.MaxTokens}");
        if (claims.Resume != open.Resume)
            return TicketVerdict.Refuse(open.Resume ? "the route ticket does not allow a resume of this session" : "the route ticket is for a resume, the open is fresh");
        if (claims.Hops.Count == 0 || claims.Hops.Count > RouteTickets.MaxHops)
            return TicketVerdict.Refuse($"the route ticket names {claims.Hops.Count} stages, not 1 to {RouteTickets.MaxHops}");

        var at = -1;
        for (var i = 0; i < claims.Hops.Count; i++)
        {
            var hop = claims.Hops[i];
            if (hop.NodeId == NodeId && hop.LayerStart == open.LayerStart && hop.LayerEnd == open.LayerEnd)
            {
                at = i;
                break;
            }
        }
        if (at < 0)
            return TicketVerdict.Refuse($"the route ticket's route has no stage node {NodeId} layers [{open.LayerStart}, {open.LayerEnd})");
        if (at > 0 && callerNodeId is not null && callerNodeId != claims.Hops[at - 1].NodeId)
            return TicketVerdict.Refuse($"the open comes from node {Clip(callerNodeId)}, the ticket's stage before this one is node {Clip(claims.Hops[at - 1].NodeId)}");
        var tail = claims.Hops.Count - at - 1;
        if (open.Next.Count != tail)
            return TicketVerdict.Refuse($"the open's route continues with {open.Next.Count} stages after this one, the ticket's with {tail}");
        for (var k = 0; k < tail; k++)
        {
            var signedHop = claims.Hops[at + 1 + k];
            if (!signedHop.Equals(open.Next[k]))
                return TicketVerdict.Refuse($"the open's next stage {k + 1} ({Describe(open.Next[k])}) is not the ticket's ({Describe(signedHop)})");
        }
        return new TicketVerdict(null, tail > 0 ? claims.Hops[at + 1] : null);
    }

    private static string Time(long unixMs) =>
        DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(unixMs, -62135596800000L, 253402300799999L)).ToString("O", CultureInfo.InvariantCulture);

    // Hostile ids can be long; messages stay short.
    private static string Clip(string text) => text.Length <= 80 ? text : text[..80] + "…";

    private static string Describe(RouteHop hop) => $"node {Clip(hop.NodeId)} at {Clip(hop.Endpoint)} layers [{hop.LayerStart}, {hop.LayerEnd})";
}
