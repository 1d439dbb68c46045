using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Potluck.Protocol.V1;
using Potluck.Protocol;
using Potluck.Inference.Gguf;
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

[ProcessTest]
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
        // A raw HTTP/2 gRPC request whose one frame is not a protobuf HopRequest.
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
}
