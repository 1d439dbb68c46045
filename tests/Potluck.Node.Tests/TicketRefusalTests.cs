using System.Net;
using System.Net.Sockets;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Potluck.Inference.Gguf;
using Potluck.Protocol;
using Potluck.Protocol.V1;
using Potluck.Security;
using GrpcStage = Potluck.Protocol.V1.Stage;

namespace Potluck.Node.Tests;

/// <summary>Two real nodes ([0,2) then [2,4)) and a TCP canary that must never be dialled.</summary>
public sealed class TwoNodeFixture : IAsyncLifetime
{
    public InProcessPool Pool { get; private set; } = null!;
    public GrpcChannel First { get; private set; } = null!;
    public TcpListener Canary { get; } = new(IPAddress.Loopback, 0);
    public string CanaryEndpoint => $"https://127.0.0.1:{((IPEndPoint)Canary.LocalEndpoint).Port}";
    public string ModelId => Pool.Host(0).ModelId;
    public int Width => Pool.Host(0).Width;

    public async Task InitializeAsync()
    {
        Canary.Start();
        Pool = await InProcessPool.StartAsync(TestModels.Small(GgmlType.Q8_0), [(0, 2), (2, 4)], kvBudgetTokens: 1024, prefix: "tk");
        First = Channels.For(Pool.Options[0]);
    }

    /// <summary>True when anything connected to the canary since the fixture started.</summary>
    public bool CanaryDialled => Canary.Pending();

    public async Task DisposeAsync()
    {
        First.Dispose();
        Canary.Stop();
        await Pool.DisposeAsync();
    }
}

/// <summary>
/// A node opens, resumes or forwards only with the gateway's route ticket, and dials only the next hop it names: every
/// open here is refused with PermissionDenied / TICKET_INVALID naming the first stage, reserves nothing, and dials
/// neither the real next stage nor the canary.
/// </summary>
[ProcessTest]
public sealed class TicketRefusalTests(TwoNodeFixture fixture) : IClassFixture<TwoNodeFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private const int MaxTokens = 64;

    private InProcessPool Pool => fixture.Pool;
    private HopStage FirstStage => new(Pool.Options[0].ResolvedNodeId, 0, 2);

    private OpenSession Open(string sessionId, ByteString ticket, IReadOnlyList<RouteHop>? route = null, ResumePoint? resume = null) =>
        HopFrames.Open(sessionId, fixture.ModelId, MaxTokens, HiddenType.F16, route ?? Pool.Route(), ticket, resume);

    private async Task<HopFailure> RefusedAsync(OpenSession open)
    {
        var started = DateTime.UtcNow;
        var error = await Assert.ThrowsAsync<RpcException>(() => Channels.OpenAsync(fixture.First, open, fixture.Width));
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(2), $"refused after {(DateTime.UtcNow - started).TotalMilliseconds:F0} ms");
        var failure = HopFailure.Read(error);
        Assert.Equal((StatusCode.PermissionDenied, HopFailureReason.TicketInvalid), (failure.Code, failure.Reason));
        Assert.Equal(FirstStage, failure.Stage);
        return failure;
    }

    /// <summary>Nothing was reserved on either node and nothing dialled the canary.</summary>
    private void AssertNothingHappened(string sessionId)
    {
        for (var i = 0; i < 2; i++) Assert.DoesNotContain(sessionId, Pool.Host(i).SessionIds);
        Assert.False(fixture.CanaryDialled, "a refused open dialled the canary");
    }

    private async Task AssertPoolServesAsync()
    {
        var sessionId = $"ok-{Guid.NewGuid():N}";
        await using var client = await Channels.OpenAsync(fixture.First, Pool.OpenMessage(sessionId, fixture.ModelId, MaxTokens), fixture.Width);
        Assert.Equal(2, client.Opened.Stages.Count);
        var row = Enumerable.Range(0, fixture.Width).Select(i => MathF.Sin(i) * 0.3f).ToArray();
        var result = await client.StepAsync(row, 1, 0, lastRowOnly: true, new float[fixture.Width], Timeout);
        Assert.Equal(1, result.SessionLength);
        await client.CloseAsync(Timeout);
    }

    [Fact]
    public async Task An_open_without_a_ticket_is_refused_and_nothing_is_reserved_or_dialled()
    {
        var free = Pool.Host(0).FreeKvTokens;
        var failure = await RefusedAsync(Open("no-ticket", ByteString.Empty));
        Assert.Contains("no route ticket", failure.Message);
        Assert.Equal(free, Pool.Host(0).FreeKvTokens);
        AssertNothingHappened("no-ticket");
        await AssertPoolServesAsync();
    }

    [Fact]
    public async Task Expired_and_forged_tickets_are_refused()
    {
        var route = Pool.Route();
        var longAgo = new FixedClock(DateTimeOffset.UtcNow - TimeSpan.FromMinutes(10));
        var expired = RouteTickets.Issue(TestTickets.Authority(), "expired", route, MaxTokens, false, RouteTickets.DefaultLifetime, longAgo);
        Assert.Contains("expired", (await RefusedAsync(Open("expired", expired))).Message);
        AssertNothingHappened("expired");

        var directory = Path.Combine(Path.GetTempPath(), $"potluck-forger-{Guid.NewGuid():N}");
        try
        {
            using var forger = PoolAuthority.Create(directory, TestPki.DefaultPool);
            var forged = RouteTickets.Issue(forger, "forged", route, MaxTokens, false, RouteTickets.DefaultLifetime);
            Assert.Contains("not signed by the CA", (await RefusedAsync(Open("forged", forged))).Message);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
        AssertNothingHappened("forged");
        var garbage = new byte[300];
        new Random(3).NextBytes(garbage);
        await RefusedAsync(Open("garbage", ByteString.CopyFrom(garbage)));
        AssertNothingHappened("garbage");
        await AssertPoolServesAsync();
    }

    [Fact]
    public async Task A_ticket_naming_another_next_hop_dials_nothing()
    {
        var route = Pool.Route();
        var canary = new RouteHop(route[1]) { Endpoint = fixture.CanaryEndpoint };
        // A genuine ticket for the real route, the open pointing the next hop at the canary.
        var real = TestTickets.For("to-canary", route, MaxTokens, resume: false);
        var failure = await RefusedAsync(Open("to-canary", real, [route[0], canary]));
        Assert.Contains("is not the ticket's", failure.Message);
        AssertNothingHappened("to-canary");

        // A genuine ticket for a route through the canary, the open naming the real next stage: refused, neither dialled.
        var viaCanary = TestTickets.For("via-canary", [route[0], canary], MaxTokens, resume: false);
        await RefusedAsync(Open("via-canary", viaCanary, route));
        AssertNothingHappened("via-canary");

        // Another node id as next hop at the real endpoint, and a ticket that does not name this node at all.
        var impostor = new RouteHop(route[1]) { NodeId = "impostor" };
        await RefusedAsync(Open("impostor", TestTickets.For("impostor", route, MaxTokens, resume: false), [route[0], impostor]));
        AssertNothingHappened("impostor");
        var elsewhere = TestTickets.For("elsewhere", [new RouteHop(route[0]) { NodeId = "other-node" }, route[1]], MaxTokens, resume: false);
        Assert.Contains($"no stage node {Pool.Options[0].ResolvedNodeId}", (await RefusedAsync(Open("elsewhere", elsewhere))).Message);
        AssertNothingHappened("elsewhere");
        await AssertPoolServesAsync();
    }

    [Fact]
    public async Task Dial_failures_of_the_next_stage_read_the_same_for_closed_open_http1_and_tls_ports()
    {
        // Genuine tickets (as a gateway with a stale view would sign) for a next stage at each kind of port.
        using var closed = new TcpListener(IPAddress.Loopback, 0);
        closed.Start();
        var closedPort = ((IPEndPoint)closed.LocalEndpoint).Port;
        closed.Stop();
        using var http1 = new TcpListener(IPAddress.Loopback, 0);
        http1.Start();
        using var hangup = new TcpListener(IPAddress.Loopback, 0);
        hangup.Start();
        using var stop = new CancellationTokenSource();
        _ = Task.Run(async () =>
        {
            // An HTTP/1.1 server: answers anything with a 400 and closes.
            while (!stop.IsCancellationRequested)
            {
                using var client = await http1.AcceptTcpClientAsync(stop.Token);
                await client.GetStream().WriteAsync("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"u8.ToArray(), stop.Token);
            }
        });
        _ = Task.Run(async () =>
        {
            // An open port that accepts and hangs up at once.
            while (!stop.IsCancellationRequested) (await hangup.AcceptTcpClientAsync(stop.Token)).Dispose();
        });
        var ports = new Dictionary<string, string>
        {
            ["closed"] = $"https://127.0.0.1:{closedPort}",
            ["http1"] = $"https://127.0.0.1:{((IPEndPoint)http1.LocalEndpoint).Port}",
            ["hangup"] = $"https://127.0.0.1:{((IPEndPoint)hangup.LocalEndpoint).Port}",
            // A real member's TLS port, but not the member the ticket names (its certificate says tk-0, not tk-1).
            ["other-member-tls"] = Pool.Options[0].GrpcEndpoint,
        };
        var messages = new Dictionary<string, string>();
        foreach (var (kind, endpoint) in ports)
        {
            var next = new RouteHop(Pool.Route()[1]) { Endpoint = endpoint };
            var sessionId = $"dial-{kind}";
            var route = new[] { Pool.Route()[0], next };
            var open = Open(sessionId, TestTickets.For(sessionId, route, MaxTokens, resume: false), route);
            var error = await Assert.ThrowsAsync<RpcException>(() => Channels.OpenAsync(fixture.First, open, fixture.Width));
            var failure = HopFailure.Read(error);
            Assert.Equal((StatusCode.Unavailable, HopFailureReason.StageUnreachable), (failure.Code, failure.Reason));
            Assert.Equal(new HopStage(next.NodeId, next.LayerStart, next.LayerEnd), failure.Stage);
            // The message minus the endpoint the caller chose is the same for every kind of port.
            messages[kind] = failure.Message.Replace(endpoint, "<endpoint>");
            Assert.EndsWith($"next stage {next.NodeId} unreachable", failure.Message);
        }
        Assert.Single(messages.Values.Distinct());
        await stop.CancelAsync();
        http1.Stop();
        hangup.Stop();
        await AssertPoolServesAsync();
    }

    [Fact]
    public async Task A_resume_of_someone_elses_session_is_refused_and_the_owner_keeps_it()
    {
        var victim = $"victim-{Guid.NewGuid():N}";
        await using var owner = await Channels.OpenAsync(fixture.First, Pool.OpenMessage(victim, fixture.ModelId, MaxTokens), fixture.Width);
        var row = Enumerable.Range(0, fixture.Width).Select(i => MathF.Cos(i) * 0.3f).ToArray();
        var output = new float[fixture.Width];
        await owner.StepAsync(row, 1, 0, lastRowOnly: true, output, Timeout);

        var route = Pool.Route();
        var resumeAt = new ResumePoint(1, 1);
        // The attacker's own, genuine resume ticket, used for the victim's session id.
        var own = TestTickets.For("attacker", route, MaxTokens, resume: true);
        Assert.Contains("is for session 'attacker'", (await RefusedAsync(Open(victim, own, resume: resumeAt))).Message);
        // The victim's fresh-open ticket (as a member on its route saw it), replayed as a resume.
        var seen = TestTickets.For(victim, route, MaxTokens, resume: false);
        Assert.Contains("does not allow a resume", (await RefusedAsync(Open(victim, seen, resume: resumeAt))).Message);

        // The owner's stream was never taken over.
        var next = await owner.StepAsync(row, 1, 1, lastRowOnly: true, output, Timeout);
        Assert.Equal(2, next.SessionLength);
        await owner.CloseAsync(Timeout);
        Assert.False(fixture.CanaryDialled);
    }

    [Fact]
    public async Task The_gateways_fresh_resume_ticket_resumes_the_session()
    {
        var sessionId = $"resumed-{Guid.NewGuid():N}";
        var route = Pool.Route();
        var first = await Channels.OpenAsync(fixture.First, Pool.OpenMessage(sessionId, fixture.ModelId, MaxTokens), fixture.Width);
        var row = Enumerable.Range(0, fixture.Width).Select(i => MathF.Sin(i * 0.5f) * 0.3f).ToArray();
        await first.StepAsync(row, 1, 0, lastRowOnly: true, new float[fixture.Width], Timeout);
        // The route breaks: the stages detach the session.
        await first.DisposeAsync();
        await using var resumed = await Channels.OpenAsync(fixture.First,
            Open(sessionId, TestTickets.For(sessionId, route, MaxTokens, resume: true), resume: new ResumePoint(1, 1)), fixture.Width);
        Assert.Equal(1, resumed.FirstStageLength);
        var result = await resumed.StepAsync(row, 1, 1, lastRowOnly: true, new float[fixture.Width], Timeout);
        Assert.Equal(2, result.SessionLength);
        await resumed.CloseAsync(Timeout);
    }

    [Fact]
    public async Task A_ticket_replayed_to_a_later_stage_by_another_member_is_refused()
    {
        // The test client is a pool member, but not the stage before tk-1 on this ticket's route.
        var route = Pool.Route();
        var sessionId = "replayed-to-second";
        var open = HopFrames.ForNextStage(Open(sessionId, TestTickets.For(sessionId, route, MaxTokens, resume: false)));
        using var second = Channels.For(Pool.Options[1]);
        var error = await Assert.ThrowsAsync<RpcException>(() => Channels.OpenAsync(second, open, fixture.Width));
        var failure = HopFailure.Read(error);
        Assert.Equal((StatusCode.PermissionDenied, HopFailureReason.TicketInvalid), (failure.Code, failure.Reason));
        Assert.Equal(new HopStage(Pool.Options[1].ResolvedNodeId, 2, 4), failure.Stage);
        Assert.Contains($"the ticket's stage before this one is node {Pool.Options[0].ResolvedNodeId}", failure.Message);
        AssertNothingHappened(sessionId);
    }

    [Fact]
    public async Task A_raw_stream_gets_the_refusal_status_with_no_answer()
    {
        using var call = new GrpcStage.StageClient(fixture.First).Hop();
        await call.RequestStream.WriteAsync(new HopRequest { Open = Open("raw", ByteString.Empty) });
        using var timeout = new CancellationTokenSource(Timeout);
        var error = await Assert.ThrowsAsync<RpcException>(async () => { while (await call.ResponseStream.MoveNext(timeout.Token)) { } });
        Assert.Equal(StatusCode.PermissionDenied, error.StatusCode);
        Assert.StartsWith($"node {Pool.Options[0].ResolvedNodeId} layers [0, 2): the open carries no route ticket", error.Status.Detail);
        AssertNothingHappened("raw");
    }
}
