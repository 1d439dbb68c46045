using System.Diagnostics;
using System.Runtime;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Potluck.Protocol.V1;
using Potluck.Protocol;
using Potluck.Inference.Gguf;
using Potluck.Security;
using GrpcStage = Potluck.Protocol.V1.Stage;

namespace Potluck.Node.Tests;

/// <summary>One real node (final stage over the whole small model) shared by the hostile-frame tests.</summary>
public sealed class SingleNodeFixture : IAsyncLifetime
{
    public InProcessPool Pool { get; private set; } = null!;
    public GrpcChannel Channel { get; private set; } = null!;
    public string ModelId => Pool.Host(0).ModelId;
    public int Width => Pool.Host(0).Width;

    public async Task InitializeAsync()
    {
        var path = TestModels.Small(GgmlType.Q8_0);
        Pool = await InProcessPool.StartAsync(path, [(0, 4)], kvBudgetTokens: 4096, prefix: "solo");
        Channel = Channels.For(Pool.Options[0]);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        await Pool.DisposeAsync();
    }
}

// "timing" runs after the parallel collections, alone: the memory check reads this whole test process's RSS.
[ProcessTest]
[Collection("timing")]
public sealed class HostileFrameTests(SingleNodeFixture node) : IClassFixture<SingleNodeFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private int _sessionCounter;

    private async Task<(AsyncDuplexStreamingCall<HopRequest, HopResponse> Call, string SessionId)> OpenRawAsync(int maxTokens = 64)
    {
        var sessionId = $"hostile-{Guid.NewGuid():N}-{Interlocked.Increment(ref _sessionCounter)}";
        var call = new GrpcStage.StageClient(node.Channel).Hop();
        await call.RequestStream.WriteAsync(new HopRequest { Open = node.Pool.OpenMessage(sessionId, node.ModelId, maxTokens) });
        using var timeout = new CancellationTokenSource(Timeout);
        Assert.True(await call.ResponseStream.MoveNext(timeout.Token));
        Assert.Equal(HopResponse.KindOneofCase.Opened, call.ResponseStream.Current.KindCase);
        return (call, sessionId);
    }

    private Step ValidStep(string sessionId, ulong stepId, int start, int rows, HiddenType type = HiddenType.F16, float value = 0.25f)
    {
        var floats = new float[rows * node.Width];
        for (var i = 0; i < floats.Length; i++) floats[i] = value * MathF.Sin(i + start);
        var bytes = new byte[floats.Length * HiddenStateCodec.BytesPerElement(type)];
        HiddenStateCodec.Encode(floats, type, bytes);
        return new Step
        {
            SessionId = sessionId, StepId = stepId, StartPosition = start, RowCount = rows, Width = node.Width, Dtype = type,
            Hidden = ByteString.CopyFrom(bytes), LastRowOnly = true,
        };
    }

    /// <summary>Sends one frame on a fresh session (after a good first step) and returns the status the stream ends with.</summary>
    private async Task<StatusCode> StatusAfter(Func<string, Step> badStep) => (await FailureAfter(badStep)).Code;

    /// <summary>As <see cref="StatusAfter"/>, with the failure's reason and failing stage.</summary>
    private async Task<HopFailure> FailureAfter(Func<string, Step> badStep)
    {
        var (call, sessionId) = await OpenRawAsync();
        using (call)
        {
            await call.RequestStream.WriteAsync(new HopRequest { Step = ValidStep(sessionId, 1, 0, 2) });
            using var timeout = new CancellationTokenSource(Timeout);
            Assert.True(await call.ResponseStream.MoveNext(timeout.Token));
            try
            {
                await call.RequestStream.WriteAsync(new HopRequest { Step = badStep(sessionId) });
            }
            catch (RpcException)
            {
                // The server may reset the stream while a huge frame is still being written; the status follows.
            }
            var error = await Assert.ThrowsAsync<RpcException>(async () =>
            {
                while (await call.ResponseStream.MoveNext(timeout.Token)) { }
            });
            return HopFailure.Read(error);
        }
    }

    private HopStage Solo => new(node.Pool.Options[0].ResolvedNodeId, 0, 4);

    private async Task AssertNodeServesAsync()
    {
        var free = node.Pool.Host(0).FreeKvTokens;
        var (call, sessionId) = await OpenRawAsync();
        using (call)
        {
            await call.RequestStream.WriteAsync(new HopRequest { Step = ValidStep(sessionId, 1, 0, 3) });
            using var timeout = new CancellationTokenSource(Timeout);
            Assert.True(await call.ResponseStream.MoveNext(timeout.Token));
            var result = call.ResponseStream.Current.Result;
            Assert.Equal(1, result.RowCount);
            Assert.Equal(3, result.SessionLength);
            await call.RequestStream.CompleteAsync();
            while (await call.ResponseStream.MoveNext(timeout.Token)) { }
        }
        // Ending the stream freed the session's KV again.
        await WaitUntil(() => node.Pool.Host(0).FreeKvTokens == free + 0 && !node.Pool.Host(0).SessionIds.Contains(sessionId));
    }

    private static async Task WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("condition not met in time");
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task Wrong_width_is_invalid_argument()
    {
        var failure = await FailureAfter(id => { var s = ValidStep(id, 2, 2, 1); s.Width = node.Width + 1; return s; });
        Assert.Equal(StatusCode.InvalidArgument, failure.Code);
        Assert.Equal(HopFailureReason.InvalidFrame, failure.Reason);
        Assert.Equal(Solo, failure.Stage);
        await AssertNodeServesAsync();
    }

    [Fact]
    public async Task Payload_not_matching_shape_or_dtype_is_invalid_argument()
    {
        // F32 bytes labelled F16: twice the expected length.
        Assert.Equal(StatusCode.InvalidArgument, await StatusAfter(id => { var s = ValidStep(id, 2, 2, 1, HiddenType.F32); s.Dtype = HiddenType.F16; return s; }));
        Assert.Equal(StatusCode.InvalidArgument, await StatusAfter(id => { var s = ValidStep(id, 2, 2, 1); s.Dtype = (HiddenType)7; return s; }));
        Assert.Equal(StatusCode.InvalidArgument, await StatusAfter(id => { var s = ValidStep(id, 2, 2, 1); s.RowCount = 3; return s; }));
        Assert.Equal(StatusCode.InvalidArgument, await StatusAfter(id => { var s = ValidStep(id, 2, 2, 1); s.Hidden = ByteString.CopyFrom(new byte[] { 1, 2, 3 }); return s; }));
        await AssertNodeServesAsync();
    }

    [Fact]
    public async Task Non_finite_values_are_invalid_argument()
    {
        var nan = await FailureAfter(id => ValidStep(id, 2, 2, 1, HiddenType.F32, float.NaN));
        Assert.Equal((StatusCode.InvalidArgument, HopFailureReason.NonFiniteHidden), (nan.Code, nan.Reason));
        Assert.Equal(StatusCode.InvalidArgument, await StatusAfter(id => ValidStep(id, 2, 2, 1, HiddenType.F16, float.PositiveInfinity)));
        await AssertNodeServesAsync();
    }

    [Fact]
    public async Task Hundred_megabyte_payload_is_resource_exhausted()
    {
        var tooLarge = await FailureAfter(id =>
        {
            var s = ValidStep(id, 2, 2, 1);
            s.Hidden = ByteString.CopyFrom(new byte[100 * 1024 * 1024]);
            return s;
        });
        Assert.Equal(StatusCode.ResourceExhausted, tooLarge.Code);
        // gRPC refuses it before the stage sees it: no details, so the reason comes from the code and no stage is named.
        Assert.Equal(HopFailureReason.FrameTooLarge, tooLarge.Reason);
        Assert.Null(tooLarge.Stage);
        await AssertNodeServesAsync();
    }

    [Fact]
    public async Task Step_for_another_session_is_invalid_argument_and_unknown_session_is_not_found()
    {
        Assert.Equal(StatusCode.InvalidArgument, await StatusAfter(_ => ValidStep("someone-else", 2, 2, 1)));

        using var call = new GrpcStage.StageClient(node.Channel).Hop();
        await call.RequestStream.WriteAsync(new HopRequest { Step = ValidStep("never-opened", 1, 0, 1) });
        using var timeout = new CancellationTokenSource(Timeout);
        var error = await Assert.ThrowsAsync<RpcException>(async () => { while (await call.ResponseStream.MoveNext(timeout.Token)) { } });
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        Assert.Equal(HopFailureReason.SessionNotFound, HopFailure.Read(error).Reason);
        await AssertNodeServesAsync();
    }

    [Fact]
    public async Task Out_of_order_step_is_failed_precondition()
    {
        var outOfOrder = await FailureAfter(id => ValidStep(id, 5, 2, 1));
        Assert.Equal((StatusCode.FailedPrecondition, HopFailureReason.StepOutOfOrder), (outOfOrder.Code, outOfOrder.Reason));
        Assert.Equal(Solo, outOfOrder.Stage);
        // Right id, wrong position: the engine's position check.
        var position = await FailureAfter(id => ValidStep(id, 2, 7, 1));
        Assert.Equal((StatusCode.FailedPrecondition, HopFailureReason.PositionMismatch), (position.Code, position.Reason));
        await AssertNodeServesAsync();
    }

    [Fact]
    public async Task Repeated_step_is_answered_again_and_never_applied_twice()
    {
        var (call, sessionId) = await OpenRawAsync();
        using (call)
        {
            using var timeout = new CancellationTokenSource(Timeout);
            var step = ValidStep(sessionId, 1, 0, 3);
            await call.RequestStream.WriteAsync(new HopRequest { Step = step });
            Assert.True(await call.ResponseStream.MoveNext(timeout.Token));
            var first = call.ResponseStream.Current.Result;
            Assert.False(first.Replayed);

            await call.RequestStream.WriteAsync(new HopRequest { Step = step });
            Assert.True(await call.ResponseStream.MoveNext(timeout.Token));
            var again = call.ResponseStream.Current.Result;
            Assert.True(again.Replayed);
            Assert.Equal(first.Hidden, again.Hidden);
            Assert.Equal(3, node.Pool.Host(0).SessionLength(sessionId));

            // The session goes on from where the first application left it.
            await call.RequestStream.WriteAsync(new HopRequest { Step = ValidStep(sessionId, 2, 3, 1) });
            Assert.True(await call.ResponseStream.MoveNext(timeout.Token));
            Assert.Equal(4, call.ResponseStream.Current.Result.SessionLength);
        }
    }

    [Fact]
    public async Task Garbage_bytes_instead_of_a_message_end_the_call_and_the_node_keeps_serving()
    {
        // A raw HTTP/2 gRPC request (over the member's mutual TLS) whose one frame is not a protobuf HopRequest.
        using var http = TestPki.HttpClient(node.Pool.Options[0].ResolvedNodeId);
        var garbage = new byte[1000];
        new Random(7).NextBytes(garbage);
        var frame = new byte[5 + garbage.Length];
        frame[0] = 0;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(1), (uint)garbage.Length);
        garbage.CopyTo(frame, 5);
        using var request = new HttpRequestMessage(HttpMethod.Post, $"{node.Pool.Options[0].GrpcEndpoint}/potluck.v1.Stage/Hop")
        {
            Content = new ByteArrayContent(frame),
            Version = new Version(2, 0),
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/grpc");
        request.Headers.TryAddWithoutValidation("TE", "trailers");
        using var timeout = new CancellationTokenSource(Timeout);
        using var response = await http.SendAsync(request, timeout.Token);
        await response.Content.ReadAsByteArrayAsync(timeout.Token);
        var status = response.TrailingHeaders.TryGetValues("grpc-status", out var values) ? values.First()
            : response.Headers.TryGetValues("grpc-status", out var h) ? h.First() : null;
        Assert.True(status is not null, $"HTTP {(int)response.StatusCode}; headers: {response.Headers}; trailers: {response.TrailingHeaders}");
        Assert.NotEqual("0", status);
        await AssertNodeServesAsync();
    }

    [Fact]
    public async Task Fuzzed_frames_are_all_rejected_or_served_and_the_node_survives()
    {
        var rng = new Random(20261125);
        var codes = new Dictionary<StatusCode, int>();
        for (var round = 0; round < 300; round++)
        {
            var (call, sessionId) = await OpenRawAsync();
            using (call)
            {
                var step = ValidStep(sessionId, 1, 0, 1 + rng.Next(3));
                switch (rng.Next(8))
                {
                    case 0: step.Width = rng.Next(-5, 200); break;
                    case 1: step.RowCount = rng.Next(-3, 2000); break;
                    case 2: step.Dtype = (HiddenType)rng.Next(0, 5); break;
                    case 3: { var b = new byte[rng.Next(0, 2000)]; rng.NextBytes(b); step.Hidden = ByteString.CopyFrom(b); break; }
                    case 4: step.StepId = (ulong)rng.NextInt64(); break;
                    case 5: step.StartPosition = rng.Next(-10, 100); break;
                    case 6: step.SessionId = rng.Next(2) == 0 ? "" : "x" + rng.Next(); break;
                    default: step.TruncateTo = rng.Next(-5, 100); step.ReturnRows.Add(rng.Next(-2, 5)); step.LastRowOnly = rng.Next(2) == 0; break;
                }
                await call.RequestStream.WriteAsync(new HopRequest { Step = step });
                await call.RequestStream.CompleteAsync();
                using var timeout = new CancellationTokenSource(Timeout);
                StatusCode code;
                try
                {
                    while (await call.ResponseStream.MoveNext(timeout.Token)) { }
                    code = StatusCode.OK;
                }
                catch (RpcException e)
                {
                    code = e.StatusCode;
                }
                // Hostile input maps to a client-error status, never to a crash or an Internal error.
                Assert.True(code is StatusCode.OK or StatusCode.InvalidArgument or StatusCode.FailedPrecondition or StatusCode.OutOfRange or StatusCode.NotFound,
                    $"round {round}: {code}");
                codes[code] = codes.GetValueOrDefault(code) + 1;
            }
        }
        Assert.True(codes.GetValueOrDefault(StatusCode.InvalidArgument) > 50);
        await AssertNodeServesAsync();
        Assert.Empty(node.Pool.Host(0).SessionIds);
    }

    /// <summary>The kinds of hostile frames a member with valid transport can send.</summary>
    private enum Hostile
    {
        WrongShape, WidthMismatch, NonFinite, GiantRowCount, TruncatedPayload, OutOfOrderStep, StepBeforeOpen, DoubleOpen,
        OversizedTicket, GarbageTicket, TicketForAnotherSession, TicketForAnotherStage, ResumeOfAnotherSession, EmptyFrame,
    }

    private static readonly StatusCode[] ClientErrors =
        [StatusCode.InvalidArgument, StatusCode.FailedPrecondition, StatusCode.NotFound, StatusCode.PermissionDenied, StatusCode.OutOfRange];

    /// <summary>
    /// One hostile frame (after a good open where the kind needs one) and the status the stream ends with, timed from the
    /// hostile frame's write.
    /// </summary>
    private async Task<(HopFailure Failure, TimeSpan Elapsed)> HostileRoundAsync(Hostile kind, Random rng, string victim)
    {
        AsyncDuplexStreamingCall<HopRequest, HopResponse> call;
        HopRequest frame;
        string sessionId;
        var opensFirst = kind is Hostile.WrongShape or Hostile.WidthMismatch or Hostile.NonFinite or Hostile.GiantRowCount or Hostile.TruncatedPayload
            or Hostile.OutOfOrderStep or Hostile.DoubleOpen or Hostile.EmptyFrame;
        if (opensFirst)
        {
            (call, sessionId) = await OpenRawAsync();
        }
        else
        {
            sessionId = $"hostile-{Guid.NewGuid():N}";
            call = new GrpcStage.StageClient(node.Channel).Hop();
        }
        var open = node.Pool.OpenMessage(sessionId, node.ModelId, 64);
        switch (kind)
        {
            case Hostile.WrongShape:
            {
                var s = ValidStep(sessionId, 1, 0, 2);
                if (rng.Next(2) == 0) s.Dtype = (HiddenType)rng.Next(2, 100);
                else s.RowCount = 1;
                frame = new HopRequest { Step = s };
                break;
            }
            case Hostile.WidthMismatch:
            {
                var s = ValidStep(sessionId, 1, 0, 1);
                s.Width = rng.Next(2) == 0 ? node.Width * 2 : rng.Next(-100, node.Width);
                frame = new HopRequest { Step = s };
                break;
            }
            case Hostile.NonFinite:
                frame = new HopRequest { Step = ValidStep(sessionId, 1, 0, 1, rng.Next(2) == 0 ? HiddenType.F32 : HiddenType.F16,
                    rng.Next(3) switch { 0 => float.NaN, 1 => float.PositiveInfinity, _ => float.NegativeInfinity }) };
                break;
            case Hostile.GiantRowCount:
            {
                var s = ValidStep(sessionId, 1, 0, 1);
                s.RowCount = rng.Next(2) == 0 ? int.MaxValue : 1 << rng.Next(16, 30);
                frame = new HopRequest { Step = s };
                break;
            }
            case Hostile.TruncatedPayload:
            {
                var s = ValidStep(sessionId, 1, 0, 2);
                s.Hidden = ByteString.CopyFrom(s.Hidden.Span[..rng.Next(0, s.Hidden.Length - 1)]);
                frame = new HopRequest { Step = s };
                break;
            }
            case Hostile.OutOfOrderStep:
                frame = new HopRequest { Step = ValidStep(sessionId, (ulong)rng.Next(2, 1_000_000), 0, 1) };
                break;
            case Hostile.StepBeforeOpen:
                frame = new HopRequest { Step = ValidStep(sessionId, 1, 0, 1) };
                break;
            case Hostile.DoubleOpen:
                frame = new HopRequest { Open = open };
                break;
            case Hostile.OversizedTicket:
            {
                var big = new byte[RouteTickets.MaxTicketBytes + 1 + rng.Next(0, 100_000)];
                rng.NextBytes(big);
                open.Ticket = ByteString.CopyFrom(big);
                frame = new HopRequest { Open = open };
                break;
            }
            case Hostile.GarbageTicket:
            {
                var garbage = new byte[rng.Next(1, 2000)];
                rng.NextBytes(garbage);
                open.Ticket = ByteString.CopyFrom(garbage);
                frame = new HopRequest { Open = open };
                break;
            }
            case Hostile.TicketForAnotherSession:
                open.Ticket = TestTickets.For($"other-{rng.Next()}", node.Pool.Route(), 64, resume: false);
                frame = new HopRequest { Open = open };
                break;
            case Hostile.TicketForAnotherStage:
            {
                // Another node, or this node with a next hop at an endpoint of the sender's choosing.
                var solo = node.Pool.Route()[0];
                RouteHop[] route = rng.Next(2) == 0
                    ? [new RouteHop(solo) { NodeId = "someone-else" }]
                    : [new RouteHop(solo) { LayerEnd = 2 }, new RouteHop { NodeId = "evil", Endpoint = "http://127.0.0.1:9", LayerStart = 2, LayerEnd = 4 }];
                open.Ticket = TestTickets.For(sessionId, route, 64, resume: false);
                frame = new HopRequest { Open = open };
                break;
            }
            case Hostile.ResumeOfAnotherSession:
            {
                var resume = HopFrames.Open(victim, node.ModelId, 64, HiddenType.F16, node.Pool.Route(),
                    TestTickets.For(sessionId, node.Pool.Route(), 64, resume: true), new ResumePoint(1, 1));
                frame = new HopRequest { Open = resume };
                break;
            }
            default:
                frame = new HopRequest();
                break;
        }
        using (call)
        {
            using var timeout = new CancellationTokenSource(Timeout);
            var watch = Stopwatch.StartNew();
            try
            {
                await call.RequestStream.WriteAsync(frame, timeout.Token);
            }
            catch (RpcException)
            {
                // The server may end the stream while the frame is still being written; the status follows.
            }
            var error = await Assert.ThrowsAsync<RpcException>(async () => { while (await call.ResponseStream.MoveNext(timeout.Token)) { } });
            return (HopFailure.Read(error), watch.Elapsed);
        }
    }

    private static long RssAfterFullGc()
    {
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        using var self = Process.GetCurrentProcess();
        self.Refresh();
        return self.WorkingSet64;
    }

    [Fact]
    public async Task Three_hundred_hostile_frames_each_get_a_clear_status_within_two_seconds_and_memory_stays_flat()
    {
        // A session the hostile resumes try to take over; it must keep serving its owner.
        var victim = $"victim-{Guid.NewGuid():N}";
        var owner = await OpenVictimAsync(victim);
        var kinds = Enum.GetValues<Hostile>();
        var rng = new Random(20261201);
        // Warm up every path once (JIT, buffers, pools) before the baseline.
        foreach (var kind in kinds) await HostileRoundAsync(kind, rng, victim);
        await AssertNodeServesAsync();
        var baseline = RssAfterFullGc();

        var seen = new Dictionary<Hostile, HashSet<HopFailureReason>>();
        var slowest = TimeSpan.Zero;
        for (var round = 0; round < 300; round++)
        {
            var kind = kinds[round % kinds.Length];
            var (failure, elapsed) = await HostileRoundAsync(kind, rng, victim);
            Assert.True(ClientErrors.Contains(failure.Code), $"round {round} ({kind}): {failure.Code} {failure.Reason}: {failure.Message}");
            // Clear: a Potluck reason from the stage itself (except gRPC's own size limit), with a message.
            Assert.True(failure.Reason != HopFailureReason.Unspecified && failure.Stage is not null && failure.Message.Length > 0,
                $"round {round} ({kind}): {failure.Code} {failure.Reason} at {failure.Stage}: {failure.Message}");
            Assert.True(elapsed < TimeSpan.FromSeconds(2), $"round {round} ({kind}) took {elapsed.TotalMilliseconds:F0} ms");
            if (elapsed > slowest) slowest = elapsed;
            if (!seen.TryGetValue(kind, out var reasons)) seen[kind] = reasons = [];
            reasons.Add(failure.Reason);
        }
        foreach (var kind in new[] { Hostile.OversizedTicket, Hostile.GarbageTicket, Hostile.TicketForAnotherSession, Hostile.TicketForAnotherStage,
                     Hostile.ResumeOfAnotherSession })
            Assert.Equal([HopFailureReason.TicketInvalid], seen[kind]);
        Assert.Equal([HopFailureReason.SessionNotFound], seen[Hostile.StepBeforeOpen]);
        Assert.Equal([HopFailureReason.AlreadyOpen], seen[Hostile.DoubleOpen]);
        Assert.Equal([HopFailureReason.NonFiniteHidden], seen[Hostile.NonFinite]);
        Assert.Equal([HopFailureReason.StepOutOfOrder], seen[Hostile.OutOfOrderStep]);

        // The victim was never taken over, the node serves, nothing hostile is held, and memory is where it was.
        using (owner)
        {
            await owner.RequestStream.WriteAsync(new HopRequest { Step = ValidStep(victim, 2, 1, 1) });
            using var timeout = new CancellationTokenSource(Timeout);
            Assert.True(await owner.ResponseStream.MoveNext(timeout.Token));
            Assert.Equal(2, owner.ResponseStream.Current.Result.SessionLength);
            await owner.RequestStream.CompleteAsync();
            while (await owner.ResponseStream.MoveNext(timeout.Token)) { }
        }
        await AssertNodeServesAsync();
        await WaitUntil(() => node.Pool.Host(0).SessionIds.Count == 0);
        var after = RssAfterFullGc();
        Assert.True(after <= baseline * 1.10, $"RSS {after / 1e6:F1} MB after the hostile frames, baseline {baseline / 1e6:F1} MB (slowest status {slowest.TotalMilliseconds:F0} ms)");
    }

    private async Task<AsyncDuplexStreamingCall<HopRequest, HopResponse>> OpenVictimAsync(string victim)
    {
        var call = new GrpcStage.StageClient(node.Channel).Hop();
        await call.RequestStream.WriteAsync(new HopRequest { Open = node.Pool.OpenMessage(victim, node.ModelId, 64) });
        using var timeout = new CancellationTokenSource(Timeout);
        Assert.True(await call.ResponseStream.MoveNext(timeout.Token));
        await call.RequestStream.WriteAsync(new HopRequest { Step = ValidStep(victim, 1, 0, 1) });
        Assert.True(await call.ResponseStream.MoveNext(timeout.Token));
        Assert.Equal(1, call.ResponseStream.Current.Result.SessionLength);
        return call;
    }
}
