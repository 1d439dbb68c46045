using Potluck.Protocol;

namespace Potluck.Gateway.Streaming;

/// <summary>What a generation does about a failed route.</summary>
public enum FailoverAction
{
    /// <summary>Give up: the failure would repeat on any route (a bad frame, a limit), or it is not the route's fault.</summary>
    Fail,
    /// <summary>Re-plan around the failed stages and resume on the new route; survivors keep their KV.</summary>
    Resume,
    /// <summary>Resuming cannot work: free the broken route and replay a fresh route from the token ids.</summary>
    ReplayWholeRoute,
}

/// <summary>How to act on a failure, and how to find the stages a new route must avoid.</summary>
/// <param name="AvoidFailingStage">The failure names its stage, and that stage must be avoided (draining, KV full).</param>
/// <param name="CheckFreeKv">Ask every stage of the failed route for its free KV and avoid those without room.</param>
/// <param name="ProbeStages">Probe every stage of the failed route and avoid those that do not answer.</param>
public readonly record struct FailoverDecision(FailoverAction Action, bool AvoidFailingStage = false, bool CheckFreeKv = false, bool ProbeStages = false);

/// <summary>
/// The gateway's failover rules, decided on the failure's reason (not its status code, which several causes share).
/// See the failure table in docs/architecture.md.
/// </summary>
public static class FailoverPolicy
{
    /// <param name="resuming">The failure came while resuming a broken route (opening the repaired route).</param>
    public static FailoverDecision Decide(HopFailureReason reason, bool resuming) => reason switch
    {
        // A stage cannot take the session where the old route left it: start over on a fresh route. Outside a resume
        // these mean the gateway and a stage disagree about the session, which a new route would not mend.
        HopFailureReason.CannotRebuild or HopFailureReason.StepOutOfOrder or HopFailureReason.StepNotCached
            or HopFailureReason.PositionMismatch or HopFailureReason.RebuildTooLate or HopFailureReason.AlreadyOpen
            or HopFailureReason.ModelMismatch or HopFailureReason.SpanMismatch
            => new(resuming ? FailoverAction.ReplayWholeRoute : FailoverAction.Fail),
        // The stage is alive but leaving: avoid it, no probe needed.
        HopFailureReason.Draining => new(FailoverAction.Resume, AvoidFailingStage: true),
        // The stage is alive but full; others on the route may be too.
        HopFailureReason.KvFull => new(FailoverAction.Resume, AvoidFailingStage: true, CheckFreeKv: true),
        // The route broke: find the dead stages by probing.
        HopFailureReason.StageUnreachable or HopFailureReason.Timeout or HopFailureReason.SessionClosed or HopFailureReason.TakenOver
            or HopFailureReason.SessionCancelled or HopFailureReason.SessionNotFound or HopFailureReason.Internal or HopFailureReason.BadResult
            => new(FailoverAction.Resume, ProbeStages: true),
        // Bad frames, positions past the reservation, a frame over the limit, a session held by another stream, a
        // refused route ticket (a fresh one is signed per open, so a refusal means clocks or keys disagree), and
        // statuses we do not know: the same request would fail on any route.
        _ => new(FailoverAction.Fail),
    };
}
