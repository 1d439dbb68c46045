using Grpc.Core;
using Potluck.Inference;
using Potluck.Node.Compute;

namespace Potluck.Node.Stage;

/// <summary>Maps engine and validation failures to the gRPC status codes documented for the Stage service.</summary>
public static class StageErrors
{
    public static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));
    public static RpcException Precondition(string message) => new(new Status(StatusCode.FailedPrecondition, message));
    public static RpcException NotFound(string message) => new(new Status(StatusCode.NotFound, message));
    public static RpcException Exhausted(string message) => new(new Status(StatusCode.ResourceExhausted, message));

    public static RpcException FromException(Exception error, string where) => error switch
    {
        RpcException rpc => rpc,
        NonFiniteHiddenStateException or HiddenStateShapeException => new(new Status(StatusCode.InvalidArgument, $"{where}: {error.Message}")),
        UnknownSessionException => new(new Status(StatusCode.NotFound, $"{where}: {error.Message}")),
        PositionMismatchException => new(new Status(StatusCode.FailedPrecondition, $"{where}: {error.Message}")),
        ContextOverflowException => new(new Status(StatusCode.OutOfRange, $"{where}: {error.Message}")),
        KvBudgetExceededException => new(new Status(StatusCode.ResourceExhausted, $"{where}: {error.Message}")),
        LayerRangeException => new(new Status(StatusCode.FailedPrecondition, $"{where}: {error.Message}")),
        SessionClosedException closed => new(new Status(closed.Cancelled ? StatusCode.Cancelled : StatusCode.Aborted, $"{where}: {error.Message}")),
        ArgumentException => new(new Status(StatusCode.InvalidArgument, $"{where}: {error.Message}")),
        OperationCanceledException => new(new Status(StatusCode.Cancelled, $"{where}: cancelled")),
        _ => new(new Status(StatusCode.Internal, $"{where}: {error.GetType().Name}: {error.Message}")),
    };
}
