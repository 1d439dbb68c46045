using Grpc.Core;
using Potluck.Inference;
using Potluck.Node.Compute;
using Potluck.Protocol;

namespace Potluck.Node.Hops;

/// <summary>
/// The failures one stage raises, each a <see cref="HopFailure"/> naming this stage: validation failures by reason,
/// and engine exceptions mapped to the reasons (and so the status codes) documented for the Stage service.
/// </summary>
internal sealed class StageFailures(SpanHost host)
{
    public HopStage Self { get; } = new(host.NodeId, host.LayerStart, host.LayerEnd);

    /// <summary>"node X layers [a,b)": how this stage names itself in messages.</summary>
    public string Where => Self.ToString();

    public RpcException Fail(HopFailureReason reason, string detail) => HopFailure.Exception(reason, $"{Where}: {detail}", Self);

    public RpcException FromException(Exception error) => error switch
    {
        RpcException rpc => rpc,
        NonFiniteHiddenStateException => Fail(HopFailureReason.NonFiniteHidden, error.Message),
        HiddenStateShapeException => Fail(HopFailureReason.InvalidFrame, error.Message),
        UnknownSessionException => Fail(HopFailureReason.SessionNotFound, error.Message),
        PositionMismatchException => Fail(HopFailureReason.PositionMismatch, error.Message),
        ContextOverflowException => Fail(HopFailureReason.PositionOutOfRange, error.Message),
        NodeDrainingException => Fail(HopFailureReason.Draining, error.Message),
        KvBudgetExceededException => Fail(HopFailureReason.KvFull, error.Message),
        LayerRangeException => Fail(HopFailureReason.SpanMismatch, error.Message),
        SessionClosedException closed => Fail(closed.Cancelled ? HopFailureReason.SessionCancelled : HopFailureReason.SessionClosed, error.Message),
        ArgumentException => Fail(HopFailureReason.InvalidFrame, error.Message),
        OperationCanceledException => Fail(HopFailureReason.SessionCancelled, "cancelled"),
        _ => Fail(HopFailureReason.Internal, $"{error.GetType().Name}: {error.Message}"),
    };
}
