using Grpc.Core;
using Microsoft.Extensions.Logging;
using Potluck.Hosting;
using Potluck.Protocol;
using Potluck.Protocol.V1;
using Potluck.Node.Compute;
using Potluck.Node.Telemetry;
using GrpcStage = Potluck.Protocol.V1.Stage;
using Potluck.Cluster;

namespace Potluck.Node.Hops;

/// <summary>
/// The data-plane endpoint of one node: one Hop stream per session that passes through it. Opens need a route ticket
/// from the pool's gateway naming this node by its certificate's node id (<see cref="MemberSecurity.Identity"/>).
/// </summary>
public sealed class StageService(SpanHost host, MemberChannels channels, NodeTelemetry telemetry, MemberSecurity security, ILogger<StageService> log)
    : GrpcStage.StageBase
{
    public override async Task Hop(IAsyncStreamReader<HopRequest> requestStream, IServerStreamWriter<HopResponse> responseStream, ServerCallContext context)
    {
        var tickets = new RouteTicketVerifier(security.Trust, security.Identity.NodeId);
        var hop = new HopSession(host, channels, tickets, telemetry, log, responseStream, context);
        try
        {
            await hop.RunAsync(requestStream);
        }
        catch (RpcException)
        {
            throw;
        }
        catch (Exception e) when (e is OperationCanceledException or IOException && context.CancellationToken.IsCancellationRequested)
        {
            // The caller went away (cancelled or reset the stream); the session is already freed.
            log.LogDebug("Hop stream caller went away: {Error}", e.Message);
        }
        catch (Exception e)
        {
            // Never let a hostile or broken stream take the node down: report and end this stream only.
            log.LogWarning(e, "Hop stream on layers {Layers} failed", LayerRange.Format(host.LayerStart, host.LayerEnd));
            throw HopFailure.Exception(HopFailureReason.Internal, $"node {host.NodeId}: {e.GetType().Name}: {e.Message}",
                new HopStage(host.NodeId, host.LayerStart, host.LayerEnd));
        }
    }

    public override Task<StageDescription> Describe(DescribeRequest request, ServerCallContext context) =>
        Task.FromResult(new StageDescription
        {
            NodeId = host.NodeId,
            ModelId = host.ModelId,
            LayerStart = host.LayerStart,
            LayerEnd = host.LayerEnd,
            LayerCount = host.LayerCount,
            Width = host.Width,
            IsFinal = host.IsFinal,
            KvBudgetTokens = host.KvBudgetTokens,
            FreeKvTokens = host.FreeKvTokens,
            OpenSessions = host.OpenSessions,
            MaxRowsPerStep = host.MaxRowsPerStep,
        });
}
