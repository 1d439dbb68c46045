using Grpc.Core;
using Potluck.Gateway.Streaming;
using Potluck.Protocol;

namespace Potluck.Gateway.Tests;

/// <summary>The gateway's failover rules, one per failure reason, and the reasons that share a status code but not a decision.</summary>
public sealed class FailoverPolicyTests
{
    // reason, decision outside a resume, decision while resuming
    public static TheoryData<HopFailureReason, FailoverAction, FailoverAction> Table => new()
    {
        { HopFailureReason.Unspecified, FailoverAction.Fail, FailoverAction.Fail },
        { HopFailureReason.InvalidFrame, FailoverAction.Fail, FailoverAction.Fail },
        { HopFailureReason.InvalidRoute, FailoverAction.Fail, FailoverAction.Fail },
        { HopFailureReason.NonFiniteHidden, FailoverAction.Fail, FailoverAction.Fail },
        { HopFailureReason.SessionNotFound, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.ModelMismatch, FailoverAction.Fail, FailoverAction.ReplayWholeRoute },
        { HopFailureReason.SpanMismatch, FailoverAction.Fail, FailoverAction.ReplayWholeRoute },
        { HopFailureReason.StepOutOfOrder, FailoverAction.Fail, FailoverAction.ReplayWholeRoute },
        { HopFailureReason.StepNotCached, FailoverAction.Fail, FailoverAction.ReplayWholeRoute },
        { HopFailureReason.AlreadyOpen, FailoverAction.Fail, FailoverAction.ReplayWholeRoute },
        { HopFailureReason.PositionMismatch, FailoverAction.Fail, FailoverAction.ReplayWholeRoute },
        { HopFailureReason.RebuildTooLate, FailoverAction.Fail, FailoverAction.ReplayWholeRoute },
        { HopFailureReason.CannotRebuild, FailoverAction.Fail, FailoverAction.ReplayWholeRoute },
        { HopFailureReason.KvFull, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.Draining, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.FrameTooLarge, FailoverAction.Fail, FailoverAction.Fail },
        { HopFailureReason.PositionOutOfRange, FailoverAction.Fail, FailoverAction.Fail },
        { HopFailureReason.AlreadyAttached, FailoverAction.Fail, FailoverAction.Fail },
        { HopFailureReason.TakenOver, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.SessionClosed, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.SessionCancelled, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.StageUnreachable, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.Timeout, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.Internal, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.BadResult, FailoverAction.Resume, FailoverAction.Resume },
        { HopFailureReason.TicketInvalid, FailoverAction.Fail, FailoverAction.Fail },
    };

    [Theory]
    [MemberData(nameof(Table))]
    public void Each_reason_has_its_decision(HopFailureReason reason, FailoverAction fresh, FailoverAction resuming)
    {
        Assert.Equal(fresh, FailoverPolicy.Decide(reason, resuming: false).Action);
        Assert.Equal(resuming, FailoverPolicy.Decide(reason, resuming: true).Action);
    }

    [Fact]
    public void The_table_covers_every_reason()
    {
        var covered = Table.Select(row => (HopFailureReason)row[0]).ToHashSet();
        Assert.Equal(Enum.GetValues<HopFailureReason>().ToHashSet(), covered);
    }

    [Fact]
    public void Kv_full_and_draining_share_a_code_but_not_how_the_failed_stage_is_found()
    {
        Assert.Equal(HopFailure.CodeOf(HopFailureReason.KvFull), HopFailure.CodeOf(HopFailureReason.Draining));
        var full = FailoverPolicy.Decide(HopFailureReason.KvFull, resuming: false);
        var draining = FailoverPolicy.Decide(HopFailureReason.Draining, resuming: false);
        // A full stage: avoid it and every other stage without room. A draining one: avoid just it, no probing.
        Assert.Equal(new FailoverDecision(FailoverAction.Resume, AvoidFailingStage: true, CheckFreeKv: true), full);
        Assert.Equal(new FailoverDecision(FailoverAction.Resume, AvoidFailingStage: true), draining);
    }

    [Fact]
    public void A_broken_route_is_found_by_probing_its_stages()
    {
        foreach (var reason in new[] { HopFailureReason.StageUnreachable, HopFailureReason.Timeout, HopFailureReason.SessionClosed, HopFailureReason.Internal })
            Assert.Equal(new FailoverDecision(FailoverAction.Resume, ProbeStages: true), FailoverPolicy.Decide(reason, resuming: true));
    }

    [Fact]
    public void Failed_precondition_has_many_reasons_and_only_a_resume_replays_the_whole_route_for_them()
    {
        var preconditions = Enum.GetValues<HopFailureReason>().Where(r => HopFailure.CodeOf(r) == StatusCode.FailedPrecondition).ToList();
        Assert.True(preconditions.Count >= 6, string.Join(",", preconditions));
        foreach (var reason in preconditions)
        {
            Assert.Equal(FailoverAction.Fail, FailoverPolicy.Decide(reason, resuming: false).Action);
            Assert.Equal(FailoverAction.ReplayWholeRoute, FailoverPolicy.Decide(reason, resuming: true).Action);
        }
    }

    [Fact]
    public void A_status_without_details_is_decided_by_the_reason_its_code_implies()
    {
        // A dead first stage: the gateway's own call fails with a bare Unavailable.
        var bare = HopFailure.Read(new RpcException(new Status(StatusCode.Unavailable, "connection refused")));
        Assert.Equal(HopFailureReason.StageUnreachable, bare.Reason);
        Assert.Null(bare.Stage);
        Assert.Equal(FailoverAction.Resume, FailoverPolicy.Decide(bare.Reason, resuming: false).Action);
        // gRPC's own message limit is ResourceExhausted too, but no stage is full: retrying elsewhere would not help.
        var tooLarge = HopFailure.Read(new RpcException(new Status(StatusCode.ResourceExhausted, "message too large")));
        Assert.Equal(HopFailureReason.FrameTooLarge, tooLarge.Reason);
        Assert.Equal(FailoverAction.Fail, FailoverPolicy.Decide(tooLarge.Reason, resuming: false).Action);
    }
}
