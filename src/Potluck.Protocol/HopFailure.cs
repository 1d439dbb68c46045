using System.Globalization;
using Any = Google.Protobuf.WellKnownTypes.Any;
using Google.Rpc;
using Grpc.Core;
using RpcStatus = Google.Rpc.Status;

namespace Potluck.Protocol;

/// <summary>
/// Why a hop failed, machine-readable. Each reason has one gRPC status code (<see cref="HopFailure.CodeOf"/>); the
/// reason travels as <c>google.rpc.ErrorInfo</c> in the status details (domain <see cref="HopFailure.Domain"/>), so
/// callers decide on the reason instead of on codes that several causes share.
/// </summary>
public enum HopFailureReason
{
    /// <summary>No reason was given (a status from outside Potluck, or a code without a mapped reason).</summary>
    Unspecified = 0,
    /// <summary>A malformed frame: wrong width, dtype, payload length, return rows, session id; an empty frame.</summary>
    InvalidFrame,
    /// <summary>The open's route tail does not continue this stage's span or has no valid endpoint.</summary>
    InvalidRoute,
    /// <summary>The hidden states contain NaN or infinity.</summary>
    NonFiniteHidden,
    /// <summary>A step for a session that is not open on this stream or stage.</summary>
    SessionNotFound,
    /// <summary>The stage holds another GGUF than the route was planned for.</summary>
    ModelMismatch,
    /// <summary>The stage runs other layers than the sender expects.</summary>
    SpanMismatch,
    /// <summary>A step id that is not the last applied id + 1 (and not a cached repeat).</summary>
    StepOutOfOrder,
    /// <summary>A repeat of a step id that is no longer in the answer cache.</summary>
    StepNotCached,
    /// <summary>A second open on a stream whose session is open.</summary>
    AlreadyOpen,
    /// <summary>A step's start position is not the session's length.</summary>
    PositionMismatch,
    /// <summary>A rebuild step after the session's first normal step.</summary>
    RebuildTooLate,
    /// <summary>A stage cannot rebuild its replacement next stage: its kept outputs are gone or do not cover the session.</summary>
    CannotRebuild,
    /// <summary>The stage has no KV room for the session.</summary>
    KvFull,
    /// <summary>The node is shutting down and accepts no new sessions.</summary>
    Draining,
    /// <summary>A frame over the message limit (gRPC's own ResourceExhausted, which carries no details).</summary>
    FrameTooLarge,
    /// <summary>Positions beyond the session's reserved tokens or the model's context.</summary>
    PositionOutOfRange,
    /// <summary>The session is attached to another stream.</summary>
    AlreadyAttached,
    /// <summary>A resuming stream took the session over from this one.</summary>
    TakenOver,
    /// <summary>The session was closed or ended on the stage (or downstream) while in use.</summary>
    SessionClosed,
    /// <summary>The session was cancelled on the stage (a control-plane cancel, a drain deadline).</summary>
    SessionCancelled,
    /// <summary>The stage cannot be reached or ended the stream without an answer.</summary>
    StageUnreachable,
    /// <summary>No answer within the caller's time limit.</summary>
    Timeout,
    /// <summary>An unexpected error inside the stage.</summary>
    Internal,
    /// <summary>The route answered with a result that does not fit the step (wrong id, width, payload).</summary>
    BadResult,
    /// <summary>An open without a valid route ticket: none, malformed, not the pool CA's, expired, or for another session, size, stage or route.</summary>
    TicketInvalid,
}

/// <summary>Which stage failed: the one whose node id and span a failure names.</summary>
public readonly record struct HopStage(string NodeId, int LayerStart, int LayerEnd)
{
    public override string ToString() => $"node {NodeId} layers [{LayerStart}, {LayerEnd})";
}

/// <summary>
/// A hop failure as both sides see it: reason, status code, message and the failing stage (when known). Stages throw
/// <see cref="ToException"/>; callers read <see cref="Read"/>; a stage that relays its next stage's failure uses
/// <see cref="Relay"/>, which keeps the reason and the failing stage and only prepends the path to the message.
/// </summary>
public sealed record HopFailure(HopFailureReason Reason, StatusCode Code, string Message, HopStage? Stage)
{
    public const string Domain = "potluck.v1";
    public const string NodeKey = "node";
    public const string LayerStartKey = "layer_start";
    public const string LayerEndKey = "layer_end";

    private static readonly string[] ReasonNames = BuildReasonNames();

    /// <summary>The one status code each reason is sent with.</summary>
    public static StatusCode CodeOf(HopFailureReason reason) => reason switch
    {
        HopFailureReason.InvalidFrame or HopFailureReason.InvalidRoute or HopFailureReason.NonFiniteHidden => StatusCode.InvalidArgument,
        HopFailureReason.SessionNotFound => StatusCode.NotFound,
        HopFailureReason.ModelMismatch or HopFailureReason.SpanMismatch or HopFailureReason.StepOutOfOrder or HopFailureReason.StepNotCached
            or HopFailureReason.AlreadyOpen or HopFailureReason.PositionMismatch or HopFailureReason.RebuildTooLate
            or HopFailureReason.CannotRebuild => StatusCode.FailedPrecondition,
        HopFailureReason.KvFull or HopFailureReason.Draining or HopFailureReason.FrameTooLarge => StatusCode.ResourceExhausted,
        HopFailureReason.PositionOutOfRange => StatusCode.OutOfRange,
        HopFailureReason.AlreadyAttached => StatusCode.AlreadyExists,
        HopFailureReason.TakenOver or HopFailureReason.SessionClosed => StatusCode.Aborted,
        HopFailureReason.SessionCancelled => StatusCode.Cancelled,
        HopFailureReason.StageUnreachable => StatusCode.Unavailable,
        HopFailureReason.Timeout => StatusCode.DeadlineExceeded,
        HopFailureReason.Internal or HopFailureReason.BadResult => StatusCode.Internal,
        HopFailureReason.TicketInvalid => StatusCode.PermissionDenied,
        _ => StatusCode.Unknown,
    };

    /// <summary>The reason for a status that carries none (transport errors, gRPC's own limits, other servers).</summary>
    public static HopFailureReason FallbackReason(StatusCode code) => code switch
    {
        StatusCode.Unavailable => HopFailureReason.StageUnreachable,
        StatusCode.DeadlineExceeded => HopFailureReason.Timeout,
        StatusCode.Cancelled => HopFailureReason.SessionCancelled,
        StatusCode.Aborted => HopFailureReason.SessionClosed,
        StatusCode.ResourceExhausted => HopFailureReason.FrameTooLarge,
        StatusCode.Internal or StatusCode.Unknown or StatusCode.DataLoss => HopFailureReason.Internal,
        StatusCode.InvalidArgument => HopFailureReason.InvalidFrame,
        StatusCode.NotFound => HopFailureReason.SessionNotFound,
        StatusCode.OutOfRange => HopFailureReason.PositionOutOfRange,
        StatusCode.AlreadyExists => HopFailureReason.AlreadyAttached,
        _ => HopFailureReason.Unspecified,
    };

    /// <summary>The ErrorInfo reason string, e.g. KV_FULL.</summary>
    public static string NameOf(HopFailureReason reason) => ReasonNames[(int)reason];

    public static bool TryParseName(string name, out HopFailureReason reason)
    {
        var index = Array.IndexOf(ReasonNames, name);
        reason = index < 0 ? HopFailureReason.Unspecified : (HopFailureReason)index;
        return index >= 0;
    }

    /// <summary>A failure with the reason's status code.</summary>
    public static HopFailure Of(HopFailureReason reason, string message, HopStage? stage) => new(reason, CodeOf(reason), message, stage);

    /// <summary>Shorthand: the exception a stage or caller throws for <paramref name="reason"/>.</summary>
    public static RpcException Exception(HopFailureReason reason, string message, HopStage? stage = null) => Of(reason, message, stage).ToException();

    /// <summary>The status this failure ends a stream with: its code and message, and ErrorInfo in the details.</summary>
    public RpcException ToException()
    {
        var info = new ErrorInfo { Reason = NameOf(Reason), Domain = Domain };
        if (Stage is { } stage)
        {
            info.Metadata[NodeKey] = stage.NodeId;
            info.Metadata[LayerStartKey] = stage.LayerStart.ToString(CultureInfo.InvariantCulture);
            info.Metadata[LayerEndKey] = stage.LayerEnd.ToString(CultureInfo.InvariantCulture);
        }
        var status = new RpcStatus { Code = (int)Code, Message = Message };
        status.Details.Add(Any.Pack(info));
        return status.ToRpcException();
    }

    /// <summary>
    /// The failure an exception reports: its ErrorInfo when it carries one of ours, else a reason guessed from the
    /// status code with no failing stage (a dead first stage, a transport error).
    /// </summary>
    public static HopFailure Read(RpcException error)
    {
        var detail = error.Status.Detail;
        if (TryReadInfo(error, out var info))
        {
            TryParseName(info.Reason, out var reason);
            return new HopFailure(reason, error.StatusCode, detail, StageOf(info));
        }
        return new HopFailure(FallbackReason(error.StatusCode), error.StatusCode, detail, null);
    }

    /// <summary>
    /// A next stage's failure as this stage passes it up: the same code, reason and failing stage, with
    /// <paramref name="path"/> prepended to the message. A failure without our details (the next stage died or is
    /// unreachable) is attributed to <paramref name="next"/>, the stage this one was talking to.
    /// </summary>
    public static RpcException Relay(RpcException downstream, string path, HopStage next)
    {
        var failure = Read(downstream);
        return (failure with { Message = $"{path}: {failure.Message}", Stage = failure.Stage ?? next }).ToException();
    }

    private static bool TryReadInfo(RpcException error, out ErrorInfo info)
    {
        info = null!;
        RpcStatus? status;
        try
        {
            status = error.GetRpcStatus();
        }
        catch (Exception e) when (e is Google.Protobuf.InvalidProtocolBufferException or FormatException)
        {
            return false; // foreign or corrupt details: read it as a status without a reason
        }
        if (status is null) return false;
        foreach (var any in status.Details)
        {
            if (any.TryUnpack<ErrorInfo>(out var candidate) && candidate.Domain == Domain)
            {
                info = candidate;
                return true;
            }
        }
        return false;
    }

    private static HopStage? StageOf(ErrorInfo info)
    {
        if (!info.Metadata.TryGetValue(NodeKey, out var node)) return null;
        info.Metadata.TryGetValue(LayerStartKey, out var start);
        info.Metadata.TryGetValue(LayerEndKey, out var end);
        return new HopStage(node, ParseOr(start), ParseOr(end));
    }

    private static int ParseOr(string? text) => int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) ? value : -1;

    // KvFull -> KV_FULL, StageUnreachable -> STAGE_UNREACHABLE.
    private static string[] BuildReasonNames()
    {
        var values = System.Enum.GetValues<HopFailureReason>();
        var names = new string[values.Length];
        foreach (var value in values)
        {
            var name = value.ToString();
            var builder = new System.Text.StringBuilder(name.Length + 4);
            for (var i = 0; i < name.Length; i++)
            {
                if (i > 0 && char.IsUpper(name[i])) builder.Append('_');
                builder.Append(char.ToUpperInvariant(name[i]));
            }
            names[(int)value] = builder.ToString();
        }
        return names;
    }
}
