using Google.Protobuf;
using Potluck.Protocol;
using Potluck.Protocol.V1;
using Potluck.Security;

namespace Potluck.Node.Tests;

/// <summary>A clock at a fixed time, for expiry checks.</summary>
public sealed class FixedClock(DateTimeOffset now) : TimeProvider
{
    public override DateTimeOffset GetUtcNow() => now;
}

/// <summary>The route-ticket check a stage runs on every open, against the test run's pool CA.</summary>
public sealed class RouteTicketTests
{
    private const string Session = "s-1";
    private const int MaxTokens = 64;

    private static readonly RouteHop A = new() { NodeId = "a", Endpoint = "https://127.0.0.1:7001", LayerStart = 0, LayerEnd = 2 };
    private static readonly RouteHop B = new() { NodeId = "b", Endpoint = "https://127.0.0.1:7002", LayerStart = 2, LayerEnd = 3 };
    private static readonly RouteHop C = new() { NodeId = "c", Endpoint = "https://127.0.0.1:7003", LayerStart = 3, LayerEnd = 4 };
    private static readonly RouteHop[] Route = [A, B, C];

    private static PoolTrust Trust => TestTickets.Authority().Trust;

    private static OpenSession Open(ByteString ticket, bool resume = false) =>
        HopFrames.Open(Session, "model", MaxTokens, HiddenType.F16, Route, ticket, resume ? new ResumePoint(3, 2) : null);

    /// <summary>The open as stage <paramref name="index"/> receives it (after the stages before it forwarded it).</summary>
    private static OpenSession At(OpenSession open, int index)
    {
        for (var i = 0; i < index; i++) open = HopFrames.ForNextStage(open);
        return open;
    }

    private static string? Refusal(OpenSession open, string node, TimeProvider? clock = null) => new RouteTicketVerifier(Trust, node, clock).Verify(open).Refusal;

    [Fact]
    public void Every_stage_accepts_the_gateways_ticket_and_learns_only_its_next_hop()
    {
        var open = Open(TestTickets.For(Session, Route, MaxTokens, resume: false));
        var first = new RouteTicketVerifier(Trust, "a").Verify(open);
        Assert.True(first.Accepted, first.Refusal);
        Assert.Equal(B, first.Next);
        Assert.Equal(C, new RouteTicketVerifier(Trust, "b").Verify(At(open, 1)).Next);
        var last = new RouteTicketVerifier(Trust, "c").Verify(At(open, 2));
        Assert.True(last.Accepted, last.Refusal);
        Assert.Null(last.Next);
        // Forwarded unchanged: the same bytes reach the last stage.
        Assert.Equal(open.Ticket, At(open, 2).Ticket);
    }

    [Fact]
    public void A_resume_needs_a_resume_ticket_and_a_fresh_open_a_fresh_one()
    {
        var fresh = TestTickets.For(Session, Route, MaxTokens, resume: false);
        var resume = TestTickets.For(Session, Route, MaxTokens, resume: true);
        Assert.Null(Refusal(Open(resume, resume: true), "a"));
        Assert.Contains("does not allow a resume", Refusal(Open(fresh, resume: true), "a"));
        Assert.Contains("is for a resume", Refusal(Open(resume, resume: false), "a"));
    }

    [Fact]
    public void Missing_oversized_and_garbage_tickets_are_refused()
    {
        Assert.Contains("no route ticket", Refusal(Open(ByteString.Empty), "a"));
        Assert.Contains("byte limit", Refusal(Open(ByteString.CopyFrom(new byte[RouteTickets.MaxTicketBytes + 1])), "a"));
        var rng = new Random(5);
        for (var i = 0; i < 50; i++)
        {
            var garbage = new byte[rng.Next(1, 400)];
            rng.NextBytes(garbage);
            Assert.NotNull(Refusal(Open(ByteString.CopyFrom(garbage)), "a"));
        }
        // Well-formed but unsigned, and signed claims that are not claims.
        Assert.Contains("no claims or no signature", Refusal(Open(new RouteTicket { Claims = ByteString.CopyFromUtf8("x") }.ToByteString()), "a"));
        var notClaims = new byte[] { 0xFF, 0xFF, 0xFF };
        var signedJunk = new RouteTicket
        {
            Claims = ByteString.CopyFrom(notClaims), Signature = ByteString.CopyFrom(TestTickets.Authority().SignTicket(notClaims)),
        }.ToByteString();
        Assert.Contains("malformed", Refusal(Open(signedJunk), "a"));
    }

    [Fact]
    public void Forged_and_tampered_tickets_are_refused()
    {
        // Another CA, even one claiming this pool's id.
        var directory = Path.Combine(Path.GetTempPath(), $"potluck-forged-ca-{Guid.NewGuid():N}");
        try
        {
            using var forger = PoolAuthority.Create(directory, TestPki.DefaultPool);
            var forged = RouteTickets.Issue(forger, Session, Route, MaxTokens, resume: false, RouteTickets.DefaultLifetime);
            Assert.Contains("not signed by the CA", Refusal(Open(forged), "a"));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }

        // The real signature over claims changed after signing (max tokens raised): the exact bytes are checked.
        var ticket = RouteTicket.Parser.ParseFrom(TestTickets.For(Session, Route, MaxTokens, resume: false));
        var claims = TicketClaims.Parser.ParseFrom(ticket.Claims);
        claims.MaxTokens = 100_000;
        var tampered = new RouteTicket { Claims = claims.ToByteString(), Signature = ticket.Signature }.ToByteString();
        var open = Open(tampered);
        open.MaxTokens = 100_000;
        Assert.Contains("not signed by the CA", Refusal(open, "a"));
        // A signature from another pool's CA of the same claims.
        var otherPool = TestTickets.Authority("tickets-other");
        var cross = new RouteTicket { Claims = ticket.Claims, Signature = ByteString.CopyFrom(otherPool.SignTicket(ticket.Claims.Span)) }.ToByteString();
        Assert.Contains("not signed by the CA", Refusal(Open(cross), "a"));
        // That pool's own ticket names its pool: refused by a member of this one.
        Assert.Contains("not signed by the CA", Refusal(Open(RouteTickets.Issue(otherPool, Session, Route, MaxTokens, false, RouteTickets.DefaultLifetime)), "a"));
    }

    [Fact]
    public void Expired_and_future_tickets_are_refused_within_the_clock_skew()
    {
        var now = DateTimeOffset.UtcNow;
        var ticket = RouteTickets.Issue(TestTickets.Authority(), Session, Route, MaxTokens, false, TimeSpan.FromMinutes(2), new FixedClock(now));
        var open = Open(ticket);
        Assert.Null(Refusal(open, "a", new FixedClock(now + TimeSpan.FromMinutes(2) + RouteTickets.ClockSkew - TimeSpan.FromSeconds(1))));
        Assert.Contains("expired", Refusal(open, "a", new FixedClock(now + TimeSpan.FromMinutes(2) + RouteTickets.ClockSkew + TimeSpan.FromSeconds(1))));
        Assert.Null(Refusal(open, "a", new FixedClock(now - RouteTickets.ClockSkew + TimeSpan.FromSeconds(1))));
        Assert.Contains("in the future", Refusal(open, "a", new FixedClock(now - RouteTickets.ClockSkew - TimeSpan.FromSeconds(1))));
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            RouteTickets.Issue(TestTickets.Authority(), Session, Route, MaxTokens, false, TimeSpan.FromDays(1)));
    }

    [Fact]
    public void A_ticket_for_another_session_size_stage_or_route_is_refused()
    {
        var ticket = TestTickets.For(Session, Route, MaxTokens, resume: false);
        var other = Open(ticket);
        other.SessionId = "someone-else";
        Assert.Contains("is for session 's-1', not 'someone-else'", Refusal(other, "a"));
        var bigger = Open(ticket);
        bigger.MaxTokens = MaxTokens * 2;
        Assert.Contains("max_tokens", Refusal(bigger, "a"));
        // Another node (or this node asked for another span) is not on the route.
        Assert.Contains("no stage node x", Refusal(Open(ticket), "x"));
        Assert.Contains("no stage node b layers [0, 2)", Refusal(Open(ticket), "b"));
        // The tail is the ticket's, hop for hop: another endpoint, node or span for the next stage, or a shorter route.
        var endpoint = Open(ticket);
        endpoint.Next[0] = new RouteHop(B) { Endpoint = "http://127.0.0.1:9" };
        Assert.Contains("is not the ticket's", Refusal(endpoint, "a"));
        var node = Open(ticket);
        node.Next[1] = new RouteHop(C) { NodeId = "evil" };
        Assert.Contains("is not the ticket's", Refusal(node, "a"));
        var shorter = Open(ticket);
        shorter.Next.RemoveAt(1);
        Assert.Contains("continues with 1 stages after this one, the ticket's with 2", Refusal(shorter, "a"));
    }

    [Fact]
    public void Routes_and_tickets_are_bounded_before_parsing()
    {
        var hops = Enumerable.Range(0, RouteTickets.MaxHops + 1).Select(i => new RouteHop { NodeId = $"n{i}", Endpoint = "https://h:1", LayerStart = i, LayerEnd = i + 1 }).ToList();
        Assert.Throws<ArgumentException>(() => TestTickets.For(Session, hops, MaxTokens, resume: false));
        var open = HopFrames.Open(Session, "model", MaxTokens, HiddenType.F16, hops, TestTickets.For(Session, hops[..2], MaxTokens, resume: false));
        Assert.Contains("stage limit", Refusal(open, "n0"));
    }

    [Fact]
    public void A_stage_after_the_first_accepts_the_ticket_only_from_the_stage_before_it()
    {
        var open = At(Open(TestTickets.For(Session, Route, MaxTokens, resume: false)), 1);
        var verifier = new RouteTicketVerifier(Trust, "b");
        Assert.True(verifier.Verify(open, callerNodeId: "a").Accepted);
        Assert.Contains("comes from node c, the ticket's stage before this one is node a", verifier.Verify(open, callerNodeId: "c").Refusal);
        // The first stage is called by the gateway, whichever member that is.
        Assert.True(new RouteTicketVerifier(Trust, "a").Verify(Open(open.Ticket), callerNodeId: "gateway-1").Accepted);
    }
}
