using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Potluck.Protocol.Diagnostics;
using Potluck.Protocol.V1;
using Potluck.Protocol;
using Potluck.Gateway.Routing;
using Potluck.Gateway.Telemetry;

namespace Potluck.Gateway.Generation;

/// <summary>
/// One session's data-plane connection along one route: a Hop stream to the first stage, which pushes every
/// step down the chain; the final stage's rows come back up the same stream. One step in flight at a time.
/// </summary>
internal sealed class RouteConnection : IAsyncDisposable
{
    private readonly SessionHopClient _client;
    private readonly GatewayTelemetry _telemetry;
    private ulong _nextStepId;

    private RouteConnection(SessionHopClient client, RoutePlan plan, string dataSessionId, GatewayTelemetry telemetry)
    {
        _client = client;
        Plan = plan;
        DataSessionId = dataSessionId;
        _telemetry = telemetry;
        _nextStepId = client.LastStepId + 1;
    }

    /// <summary>Positions the first stage held after opening: 0, or on a resume the committed length when it survived.</summary>
    public int FirstStageLength => _client.FirstStageLength;

    /// <summary>The last step the route answered; a resume continues after it.</summary>
    public ulong LastAnsweredStepId => _nextStepId - 1;

    public RoutePlan Plan { get; }

    /// <summary>The session id the stages know (a replayed route gets a fresh one).</summary>
    public string DataSessionId { get; }

    public int Width => _client.Width;

    /// <param name="resume">Re-attach the session on stages that still hold it (failover): its committed length and last answered step.</param>
    public static async Task<RouteConnection> OpenAsync(StageChannelPool channels, RoutePlan plan, string dataSessionId, string modelId,
        int maxTokens, int width, HiddenType wireType, TimeSpan timeout, GatewayTelemetry telemetry, CancellationToken ct,
        (int Length, ulong LastStepId)? resume = null)
    {
        var first = plan.Hops[0];
        var open = new OpenSession
        {
            SessionId = dataSessionId,
            ModelId = modelId,
            LayerStart = first.LayerStart,
            LayerEnd = first.LayerEnd,
            MaxTokens = maxTokens,
            WireType = wireType,
            Traceparent = Activity.Current?.Id ?? "",
            Tracestate = Activity.Current?.TraceStateString ?? "",
        };
        if (resume is { } point)
        {
            open.Resume = true;
            open.ResumeLength = point.Length;
            open.LastStepId = point.LastStepId;
        }
        for (var i = 1; i < plan.Hops.Count; i++)
        {
            var hop = plan.Hops[i];
            open.Next.Add(new RouteHop { NodeId = hop.NodeId, Endpoint = hop.Endpoint, LayerStart = hop.LayerStart, LayerEnd = hop.LayerEnd });
        }
        var client = await SessionHopClient.OpenAsync(channels.Get(first.Endpoint).CreateCallInvoker(), open, width, timeout, ct);
        return new RouteConnection(client, plan, dataSessionId, telemetry);
    }

    /// <summary>
    /// Sends <paramref name="rows"/> hidden rows at <paramref name="startPosition"/> (after an optional rewind) and
    /// decodes the final stage's last row into <paramref name="lastRow"/> (Width floats). Returns rows received.
    /// </summary>
    public async Task<int> StepAsync(ReadOnlyMemory<float> hidden, int rows, int startPosition, int? truncateTo, Memory<float> lastRow,
        TimeSpan timeout, CancellationToken ct)
    {
        var width = _client.Width;
        var stepId = _nextStepId;
        var request = _client.PrepareStep(hidden.Span, rows, startPosition, stepId, truncateTo, lastRowOnly: true);
        var started = Stopwatch.GetTimestamp();
        StepTimeline.Mark(StepEvent.GatewaySend, stepId);
        var result = await _client.SendAsync(request, timeout, ct);
        StepTimeline.Mark(StepEvent.GatewayReceived, result.StepId);
        _telemetry.HopRoundTripMs.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        _nextStepId++;
        if (result.StepId != stepId)
            throw new RpcException(new Status(StatusCode.Internal, $"route answered step {result.StepId}, expected {stepId}"));
        if (result.RowCount == 0) return 0;
        if (result.Width != width)
            throw new RpcException(new Status(StatusCode.Internal, $"route answered rows of width {result.Width}, expected {width}"));
        var element = HiddenStateCodec.BytesPerElement(result.Dtype);
        var rowBytes = width * element;
        var payload = result.Hidden.Span;
        if (payload.Length != result.RowCount * rowBytes ||
            !HiddenStateCodec.TryDecode(payload[((result.RowCount - 1) * rowBytes)..], result.Dtype, lastRow.Span[..width], out var finite) || !finite)
            throw new RpcException(new Status(StatusCode.Internal, $"result of step {result.StepId} has a malformed or non-finite payload"));
        return result.RowCount;
    }

    /// <summary>
    /// Sends rows that only rebuild a replacement first stage's KV (failover): no answer comes back, and stages
    /// that survived with these positions do not receive them.
    /// </summary>
    public Task RebuildAsync(ReadOnlyMemory<float> hidden, int rows, int startPosition, TimeSpan timeout, CancellationToken ct) =>
        _client.RebuildAsync(hidden, rows, startPosition, timeout, ct);

    /// <summary>Closes the session on every stage and waits for the confirmation.</summary>
    public Task CloseAsync(TimeSpan timeout) => _client.CloseAsync(timeout);

    /// <summary>Ends the stream abruptly: every stage frees the session as its stream ends.</summary>
    public ValueTask DisposeAsync() => _client.DisposeAsync();
}
