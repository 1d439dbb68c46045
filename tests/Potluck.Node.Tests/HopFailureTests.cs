using Grpc.Core;
using Potluck.Protocol;

namespace Potluck.Node.Tests;

/// <summary>The typed failure model: reasons as google.rpc.ErrorInfo, read back, and relayed unchanged.</summary>
public sealed class HopFailureTests
{
    [Fact]
    public void Reason_names_are_screaming_snake_case_and_parse_back()
    {
        Assert.Equal("KV_FULL", HopFailure.NameOf(HopFailureReason.KvFull));
        Assert.Equal("STEP_OUT_OF_ORDER", HopFailure.NameOf(HopFailureReason.StepOutOfOrder));
        Assert.Equal("CANNOT_REBUILD", HopFailure.NameOf(HopFailureReason.CannotRebuild));
        foreach (var reason in Enum.GetValues<HopFailureReason>())
        {
            Assert.True(HopFailure.TryParseName(HopFailure.NameOf(reason), out var parsed));
            Assert.Equal(reason, parsed);
        }
        Assert.False(HopFailure.TryParseName("NO_SUCH_REASON", out _));
    }

    [Fact]
    public void A_failure_travels_as_error_info_with_its_code_message_and_stage()
    {
        var stage = new HopStage("node-b", 2, 4);
        var error = HopFailure.Exception(HopFailureReason.Draining, "node-b: shutting down", stage);
        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Equal("node-b: shutting down", error.Status.Detail);
        var status = error.GetRpcStatus()!;
        var info = Assert.Single(status.Details).Unpack<Google.Rpc.ErrorInfo>();
        Assert.Equal("DRAINING", info.Reason);
        Assert.Equal(HopFailure.Domain, info.Domain);
        Assert.Equal("node-b", info.Metadata["node"]);
        Assert.Equal("2", info.Metadata["layer_start"]);
        Assert.Equal("4", info.Metadata["layer_end"]);

        var read = HopFailure.Read(error);
        Assert.Equal(new HopFailure(HopFailureReason.Draining, StatusCode.ResourceExhausted, "node-b: shutting down", stage), read);
    }

    [Fact]
    public void A_relayed_failure_keeps_reason_code_and_failing_stage_and_prepends_the_path()
    {
        var last = new HopStage("node-c", 3, 4);
        var original = HopFailure.Exception(HopFailureReason.KvFull, "node-c layers [3,4): 64 tokens asked, 10 free", last);
        var once = HopFailure.Relay(original, "node node-b layers [2,3) → node node-c at http://c", new HopStage("node-c", 3, 4));
        var twice = HopFailure.Relay(once, "node node-a layers [0,2) → node node-b at http://b", new HopStage("node-b", 2, 3));
        var read = HopFailure.Read(twice);
        Assert.Equal(HopFailureReason.KvFull, read.Reason);
        Assert.Equal(StatusCode.ResourceExhausted, read.Code);
        Assert.Equal(last, read.Stage);
        Assert.Equal("node node-a layers [0,2) → node node-b at http://b: node node-b layers [2,3) → node node-c at http://c: node-c layers [3,4): 64 tokens asked, 10 free",
            read.Message);
    }

    [Fact]
    public void A_bare_status_from_the_next_stage_is_attributed_to_it()
    {
        var next = new HopStage("node-b", 2, 4);
        var relayed = HopFailure.Read(HopFailure.Relay(new RpcException(new Status(StatusCode.Unavailable, "connection refused")), "a → b", next));
        Assert.Equal(HopFailureReason.StageUnreachable, relayed.Reason);
        Assert.Equal(StatusCode.Unavailable, relayed.Code);
        Assert.Equal(next, relayed.Stage);
        Assert.Equal("a → b: connection refused", relayed.Message);
    }

    [Fact]
    public void Every_reason_has_one_code_and_the_fallback_of_that_code_is_a_reason_with_it()
    {
        foreach (var reason in Enum.GetValues<HopFailureReason>().Where(r => r != HopFailureReason.Unspecified))
        {
            var code = HopFailure.CodeOf(reason);
            var fallback = HopFailure.FallbackReason(code);
            if (fallback != HopFailureReason.Unspecified) Assert.Equal(code, HopFailure.CodeOf(fallback));
        }
    }
}
