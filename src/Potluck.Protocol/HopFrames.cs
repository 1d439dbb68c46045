using System.Diagnostics;
using Google.Protobuf;
using Potluck.Protocol.V1;

namespace Potluck.Protocol;

/// <summary>Where a resumed session continues: positions every stage of the old route had applied, and its last answered step.</summary>
public readonly record struct ResumePoint(int Length, ulong LastStepId);

/// <summary>
/// The one place where hop frames are built. The caller of a route builds opens and steps here; a stage passes them
/// on with <see cref="ForNextStage"/> and <see cref="Relay"/>, which copy the received message and replace only what
/// the stage itself owns (its next stage's span and the route tail; the hidden-state payload; trace context).
/// A new wire field is therefore set here (in <see cref="Open"/> or <see cref="FillStep"/>) and reaches the final stage
/// untouched (see WireFieldTests).
/// </summary>
public static class HopFrames
{
    /// <summary>
    /// The open for a route's first stage: <paramref name="route"/>[0] is that stage, the rest its tail.
    /// <paramref name="ticket"/> is the route ticket for exactly this open (<see cref="RouteTickets.Issue"/>: same session
    /// id, route, max tokens and resume); every stage forwards it unchanged and refuses the open without it.
    /// </summary>
    public static OpenSession Open(string sessionId, string modelId, int maxTokens, HiddenType wireType, IReadOnlyList<RouteHop> route,
        ByteString ticket, ResumePoint? resume = null)
    {
        if (route.Count == 0) throw new ArgumentException("a route has at least one stage", nameof(route));
        var open = new OpenSession
        {
            SessionId = sessionId,
            ModelId = modelId,
            LayerStart = route[0].LayerStart,
            LayerEnd = route[0].LayerEnd,
            MaxTokens = maxTokens,
            WireType = wireType,
            Traceparent = Activity.Current?.Id ?? "",
            Tracestate = Activity.Current?.TraceStateString ?? "",
            Ticket = ticket,
        };
        if (resume is { } point)
        {
            open.Resume = true;
            open.ResumeLength = point.Length;
            open.LastStepId = point.LastStepId;
        }
        for (var i = 1; i < route.Count; i++) open.Next.Add(route[i]);
        return open;
    }

    /// <summary>
    /// What a stage sends its next stage: the received open with every field kept (the route ticket too, unchanged:
    /// the next stage checks the same signature), except the span (now the next stage's), the route tail (one
    /// shorter) and the trace context (this stage's activity).
    /// </summary>
    public static OpenSession ForNextStage(OpenSession received)
    {
        var next = received.Next[0];
        var forward = received.Clone();
        forward.LayerStart = next.LayerStart;
        forward.LayerEnd = next.LayerEnd;
        forward.Next.RemoveAt(0);
        forward.Traceparent = Activity.Current?.Id ?? received.Traceparent;
        forward.Tracestate = Activity.Current?.TraceStateString ?? received.Tracestate;
        return forward;
    }

    /// <summary>
    /// Fills <paramref name="step"/> (a reused frame) with one step or rebuild step. <paramref name="payload"/> is
    /// wrapped, not copied: it must stay unchanged until the frame is written.
    /// </summary>
    public static void FillStep(Step step, string sessionId, ulong stepId, int startPosition, int rowCount, int width, HiddenType dtype,
        ReadOnlyMemory<byte> payload, int? truncateTo, bool lastRowOnly, ReadOnlySpan<int> returnRows, bool rebuild)
    {
        step.SessionId = sessionId;
        step.StepId = rebuild ? 0 : stepId;
        if (truncateTo is { } t) step.TruncateTo = t;
        else step.ClearTruncateTo();
        step.StartPosition = startPosition;
        step.RowCount = rowCount;
        step.Width = width;
        step.Dtype = dtype;
        step.Hidden = UnsafeByteOperations.UnsafeWrap(payload);
        step.LastRowOnly = lastRowOnly;
        step.ReturnRows.Clear();
        foreach (var row in returnRows) step.ReturnRows.Add(row);
        step.Rebuild = rebuild;
        // Stages join the caller's trace; only when it is recorded, so untraced steps allocate nothing.
        step.Traceparent = !rebuild && Activity.Current is { Recorded: true } current ? current.Id ?? "" : "";
    }

    /// <summary>
    /// Turns a received step into the one a stage passes on: every field kept, except the hidden-state payload (this
    /// stage's outputs), its shape and dtype, and the trace context (this stage's activity; the caller's when this
    /// stage records none, so later stages still join the caller's trace).
    /// </summary>
    public static void Relay(Step received, ReadOnlyMemory<byte> payload, int rowCount, int width, HiddenType dtype)
    {
        received.Hidden = UnsafeByteOperations.UnsafeWrap(payload);
        received.RowCount = rowCount;
        received.Width = width;
        received.Dtype = dtype;
        if (Activity.Current?.Id is { } id) received.Traceparent = id;
    }
}
