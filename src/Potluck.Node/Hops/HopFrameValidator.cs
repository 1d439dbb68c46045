using Grpc.Core;
using Potluck.Node.Compute;
using Potluck.Protocol;
using Potluck.Protocol.V1;
using Potluck.Cluster;

namespace Potluck.Node.Hops;

/// <summary>How a step that passed the order checks is handled.</summary>
internal enum StepOrder
{
    /// <summary>The session's next step (last applied id + 1).</summary>
    Next,
    /// <summary>A rebuild step (failover): applied, never answered.</summary>
    Rebuild,
    /// <summary>An id already applied: answered again from the replay cache if it is still there.</summary>
    Repeat,
}

/// <summary>
/// Every check a frame on a Hop stream must pass before this stage acts on it. Each returns the failure to end the
/// stream with, or null; none has side effects, so the caller decides what a rejection frees.
/// </summary>
internal sealed class HopFrameValidator(SpanHost host, StageFailures failures, RouteTicketVerifier tickets, string? callerNodeId)
{
    private const int MaxSessionIdLength = 200;

    public RpcException? CheckFirst(HopRequest first) => first.KindCase switch
    {
        HopRequest.KindOneofCase.Open => null,
        HopRequest.KindOneofCase.Step => failures.Fail(HopFailureReason.SessionNotFound,
            $"session '{first.Step.SessionId}' is not open on this stream; send open first"),
        _ => failures.Fail(HopFailureReason.InvalidFrame, $"the first frame of a hop must be open, got {first.KindCase}"),
    };

    /// <summary>
    /// An open: its route ticket first (nothing else about this stage is told to a caller without one), then what the
    /// stage holds. <paramref name="next"/> is the next stage named in the ticket, the only one this stage may dial
    /// (null on the final stage).
    /// </summary>
    public RpcException? CheckOpen(OpenSession open, out RouteHop? next)
    {
        next = null;
        if (string.IsNullOrEmpty(open.SessionId) || open.SessionId.Length > MaxSessionIdLength)
            return failures.Fail(HopFailureReason.InvalidFrame, $"session_id must be 1-{MaxSessionIdLength} characters");
        var ticket = tickets.Verify(open, callerNodeId);
        if (!ticket.Accepted) return failures.Fail(HopFailureReason.TicketInvalid, ticket.Refusal!);
        next = ticket.Next;
        if (open.ModelId != host.ModelId)
            return failures.Fail(HopFailureReason.ModelMismatch, $"holds model {host.ModelId}, the route was planned for {open.ModelId}");
        if (open.LayerStart != host.LayerStart || open.LayerEnd != host.LayerEnd)
            return failures.Fail(HopFailureReason.SpanMismatch, $"asked to run layers {LayerRange.Format(open.LayerStart, open.LayerEnd)}");
        if (open.MaxTokens <= 0 || open.MaxTokens > host.ContextLength)
            return failures.Fail(HopFailureReason.InvalidFrame, $"max_tokens {open.MaxTokens} must be in [1, {host.ContextLength}]");
        if (!HiddenStateCodec.IsKnown(open.WireType))
            return failures.Fail(HopFailureReason.InvalidFrame, $"unknown wire_type {(int)open.WireType}");
        if (open.Resume && (open.ResumeLength < 0 || open.ResumeLength > open.MaxTokens))
            return failures.Fail(HopFailureReason.InvalidFrame, $"resume_length {open.ResumeLength} outside [0, {open.MaxTokens}]");
        if (!open.Resume && (open.ResumeLength != 0 || open.LastStepId != 0))
            return failures.Fail(HopFailureReason.InvalidFrame, "resume_length and last_step_id need resume");
        if (CheckRouteTail(open) is { } badRoute) return badRoute;
        // The ticket matched the tail hop for hop, so this is a formality that keeps the dial honest if that changes.
        return !host.IsFinal && next is null ? failures.Fail(HopFailureReason.InvalidRoute, "the ticket names no next stage") : null;
    }

    private RpcException? CheckRouteTail(OpenSession open)
    {
        if (host.IsFinal)
            return open.Next.Count != 0 ? failures.Fail(HopFailureReason.InvalidRoute, "is the final stage but the route continues") : null;
        var expect = host.LayerEnd;
        foreach (var hop in open.Next)
        {
            if (hop.LayerStart != expect || hop.LayerEnd <= hop.LayerStart || hop.LayerEnd > host.LayerCount)
                return failures.Fail(HopFailureReason.InvalidRoute, $"route hop {hop.NodeId} {LayerRange.Format(hop.LayerStart, hop.LayerEnd)} does not continue at layer {expect}");
            if (!MemberChannels.IsValidEndpoint(hop.Endpoint))
                return failures.Fail(HopFailureReason.InvalidRoute, $"route hop {hop.NodeId} has no valid https endpoint: '{hop.Endpoint}'");
            expect = hop.LayerEnd;
        }
        return expect != host.LayerCount ? failures.Fail(HopFailureReason.InvalidRoute, $"route ends at layer {expect}, the model has {host.LayerCount}") : null;
    }

    /// <param name="lastStepId">The last step id applied on this stream.</param>
    /// <param name="openedAfterStepId">The last step id when the stream opened: rebuild steps only come before the next one.</param>
    public RpcException? CheckOrder(Step step, string sessionId, ulong lastStepId, ulong openedAfterStepId, out StepOrder order)
    {
        order = StepOrder.Next;
        if (step.SessionId != sessionId)
            return failures.Fail(HopFailureReason.InvalidFrame, $"step for session '{step.SessionId}' on the stream of session '{sessionId}'");
        if (step.Rebuild)
        {
            order = StepOrder.Rebuild;
            if (step.StepId != 0)
                return failures.Fail(HopFailureReason.InvalidFrame, $"rebuild steps carry step_id 0, got {step.StepId}");
            if (lastStepId != openedAfterStepId)
                return failures.Fail(HopFailureReason.RebuildTooLate, "rebuild steps must come before the session's next step");
            if (step.HasTruncateTo || step.RowCount == 0)
                return failures.Fail(HopFailureReason.InvalidFrame, "a rebuild step carries rows and no truncate_to");
            return null;
        }
        if (step.StepId == 0) return failures.Fail(HopFailureReason.InvalidFrame, "step_id starts at 1");
        if (step.StepId <= lastStepId)
        {
            order = StepOrder.Repeat;
            return null;
        }
        if (step.StepId != lastStepId + 1)
            return failures.Fail(HopFailureReason.StepOutOfOrder, $"step {step.StepId} is out of order; expected {lastStepId + 1}");
        return null;
    }

    /// <summary>Shape, positions and payload size of a step on a session that reserved <paramref name="maxTokens"/> positions.</summary>
    public RpcException? CheckShape(Step step, int maxTokens)
    {
        var width = host.Width;
        if (step.Width != width)
            return failures.Fail(HopFailureReason.InvalidFrame, $"width {step.Width}, the model's hidden size is {width}");
        if (!HiddenStateCodec.IsKnown(step.Dtype))
            return failures.Fail(HopFailureReason.InvalidFrame, $"unknown dtype {(int)step.Dtype}");
        var rows = step.RowCount;
        if (rows < 0 || rows > host.MaxRowsPerStep)
            return failures.Fail(HopFailureReason.InvalidFrame, $"row_count {rows} must be in [0, {host.MaxRowsPerStep}]");
        if (step.HasTruncateTo && (step.TruncateTo < 0 || step.TruncateTo > maxTokens))
            return failures.Fail(HopFailureReason.InvalidFrame, $"truncate_to {step.TruncateTo} outside [0, {maxTokens}]");
        if (rows == 0 && !step.HasTruncateTo)
            return failures.Fail(HopFailureReason.InvalidFrame, "a step needs rows or truncate_to");
        if (step.StartPosition < 0 || (long)step.StartPosition + rows > maxTokens)
            return failures.Fail(HopFailureReason.PositionOutOfRange,
                $"positions [{step.StartPosition},{(long)step.StartPosition + rows}) exceed the session's {maxTokens} reserved tokens");
        var expectedBytes = PayloadBytes(step);
        if (step.Hidden.Length != expectedBytes)
            return failures.Fail(HopFailureReason.InvalidFrame, $"hidden holds {step.Hidden.Length} bytes, {rows}×{width} {step.Dtype} needs {expectedBytes}");
        if (step.LastRowOnly && step.ReturnRows.Count > 0)
            return failures.Fail(HopFailureReason.InvalidFrame, "last_row_only and return_rows are exclusive");
        var previous = -1;
        foreach (var r in step.ReturnRows)
        {
            if (r <= previous || r >= rows)
                return failures.Fail(HopFailureReason.InvalidFrame, $"return_rows must be ascending row indices below {rows}");
            previous = r;
        }
        return null;
    }

    /// <summary>The payload size a step's shape implies (call after <see cref="CheckShape"/>).</summary>
    public long PayloadBytes(Step step) => (long)step.RowCount * host.Width * HiddenStateCodec.BytesPerElement(step.Dtype);
}
