using System.Diagnostics;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Configuration;
using Potluck.Cluster;
using Potluck.Protocol.V1;
using Potluck.Protocol;
using Potluck.Inference;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Node.Compute;
using Potluck.Node.Telemetry;
using Xunit.Abstractions;

namespace Potluck.Node.Tests;

/// <summary>
/// Graceful leave with real node processes: SIGTERM makes a node refuse new sessions and report itself draining,
/// lets the session in use finish, and ends a session that never finishes at the drain deadline; the process
/// exits 0 either way.
/// </summary>
[Collection("timing")]
[ProcessTest]
public sealed class DrainTests(ITestOutputHelper output)
{
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan ViewTimeout = TimeSpan.FromSeconds(30);

    /// <summary>A session on one node that holds every layer, each step checked against the same span in this process.</summary>
    private sealed class CheckedSession(GrpcChannel channel, SessionHopClient client, ModelHead head, LayerSpan oracle, string sessionId) : IAsyncDisposable
    {
        private int _position;

        public SessionHopClient Client => client;

        public static async Task<CheckedSession> OpenAsync(NodeProcess node, OpenSession open, ModelHead head, LayerSpan oracle)
        {
            var channel = node.Channel();
            try
            {
                var client = await Channels.OpenAsync(channel, open, head.Width);
                oracle.OpenSession(open.SessionId, open.MaxTokens);
                return new CheckedSession(channel, client, head, oracle, open.SessionId);
            }
            catch
            {
                channel.Dispose();
                throw;
            }
        }

        public async Task StepAsync(int token)
        {
            var width = head.Width;
            var hidden = new float[width];
            var expected = new float[width];
            var got = new float[width];
            head.Embed([token], hidden);
            oracle.Forward([new SpanSegment(sessionId, _position, 1, LastRowOnly: true)], hidden, expected);
            var result = await client.StepAsync(hidden, 1, _position, lastRowOnly: true, got, StepTimeout);
            _position++;
            Assert.Equal(_position, result.SessionLength);
            Assert.Equal(expected, got);
        }

        public async ValueTask DisposeAsync()
        {
            oracle.CloseSession(sessionId);
            await client.DisposeAsync();
            channel.Dispose();
        }
    }

    private static SpanHost EchoHost() =>
        new(new EchoCompute(16, 0, 1, 1), "echo", Microsoft.Extensions.Logging.Abstractions.NullLogger<SpanHost>.Instance, new NodeTelemetry());

    [Fact]
    public async Task Drain_refuses_new_sessions_waits_for_open_ones_and_ends_the_rest_as_cancelled()
    {
        using var host = EchoHost();
        var finishing = host.Open("finishing", 8);
        var stuck = host.Open("stuck", 8);
        Assert.Equal(2, host.BeginDrain());
        Assert.True(host.Draining);
        Assert.Throws<NodeDrainingException>(() => host.Open("late", 8));

        // Open sessions keep stepping while draining.
        finishing.RentInput(1).Fill(1f);
        Assert.Equal(1, await finishing.StepAsync(-1, 0, 1, lastRowOnly: false).AsTask().WaitAsync(StepTimeout));

        var wait = host.WaitForSessionsToFinishAsync(TimeSpan.FromSeconds(30), CancellationToken.None);
        host.Close("finishing", cancelled: false);
        Assert.False(wait.IsCompleted, "the drain ended while a session was still open");
        host.Close("stuck", cancelled: false);
        Assert.True(await wait.WaitAsync(StepTimeout));

        // A session that never finishes: the wait gives up at its timeout, and EndRemaining closes it as cancelled.
        using var second = EchoHost();
        var open = second.Open("open", 8);
        second.BeginDrain();
        var watch = Stopwatch.StartNew();
        Assert.False(await second.WaitForSessionsToFinishAsync(TimeSpan.FromMilliseconds(300), CancellationToken.None).WaitAsync(StepTimeout));
        Assert.True(watch.Elapsed >= TimeSpan.FromMilliseconds(250), $"gave up after {watch.Elapsed.TotalMilliseconds:F0} ms");
        Assert.Equal(1, second.EndRemaining());
        Assert.True(open.IsClosed);
        Assert.True(open.WasCancelled);
        Assert.Equal(0, second.OpenSessions);

        // A detached session (its stream broke; kept for a resume) does not hold the drain up, and is ended with it.
        using var third = EchoHost();
        var detached = third.Open("detached", 8);
        var attachment = detached.TryAttachStream();
        Assert.NotNull(attachment);
        detached.Detach(attachment.Value);
        Assert.Equal(0, third.BeginDrain());
        Assert.True(await third.WaitForSessionsToFinishAsync(TimeSpan.FromSeconds(30), CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(1, third.EndRemaining());
        Assert.True(detached.WasCancelled);
    }

    [Fact]
    public void Drain_timeout_is_configurable_and_the_shutdown_limit_covers_it()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Potluck:Node:ModelPath"] = "m.gguf",
            ["Potluck:Node:Layers"] = "0-2",
            ["Potluck:Node:DrainTimeout"] = "45",
        }).Build();
        var options = NodeOptions.FromConfiguration(configuration);
        Assert.Equal(TimeSpan.FromSeconds(45), options.DrainTimeout);
        Assert.True(options.ShutdownTimeout > options.DrainTimeout);
        Assert.Equal(TimeSpan.FromSeconds(30), new NodeOptions { ModelPath = "m", LayerStart = 0, LayerEnd = 1 }.DrainTimeout);
        var bad = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Potluck:Node:ModelPath"] = "m.gguf",
            ["Potluck:Node:Layers"] = "0-2",
            ["Potluck:Node:DrainTimeout"] = "soon",
        }).Build();
        Assert.Contains("Potluck__Node__DrainTimeout", Assert.Throws<NodeConfigurationException>(() => NodeOptions.FromConfiguration(bad)).Message);
    }

    private static bool Logged(NodeProcess node, string text) =>
        node.StandardErrorLines.Any(line => line.Contains(text, StringComparison.Ordinal));

    [Fact]
    public async Task Sigterm_drains_the_session_in_use_refuses_new_ones_and_exits_0()
    {
        var drainTimeout = TimeSpan.FromSeconds(60);
        var model = TestModels.Small(GgmlType.Q8_0);
        using var lease = SharedModel.Acquire(model);
        var modelId = lease.Model.Info.ModelId;
        using var head = new ModelHead(lease.Model, threads: 1);
        using var oracle = new LayerSpan(lease.Model, 0, 4, new SpanOptions { Threads = 1 });
        await using var pool = await ProcessPool.StartAsync(output, model,
        [
            new NodeSpec("stays", 0, 4),
            new NodeSpec("leaves", 0, 4, new Dictionary<string, string> { ["Potluck__Node__DrainTimeout"] = $"{drainTimeout.TotalSeconds}" }),
        ]);
        var leaving = pool.Nodes[1];
        await ProcessPool.WaitForAsync(async () => (await pool.Directory.GetView()).HealthyShards(modelId).Count == 2, ViewTimeout, "both replicas healthy");
        var leavingShard = (await pool.Directory.GetView()).HealthyShards(modelId).Single(s => s.NodeId == "leaves");

        await using var inUse = await CheckedSession.OpenAsync(leaving, pool.OpenMessage("in-use", modelId, 64, [leavingShard]), head, oracle);
        await inUse.StepAsync(1);
        await inUse.StepAsync(40);

        leaving.Terminate();
        var sinceSigterm = Stopwatch.StartNew();
        var reportedIn = await ProcessPool.WaitForAsync(async () =>
            (await pool.Directory.GetView()).Shards.Any(s => s.Status.NodeId == "leaves" && s.Status.Draining), ViewTimeout, "the pool sees the node draining");
        output.WriteLine($"pool view shows 'leaves' draining {reportedIn.TotalSeconds:F2} s after SIGTERM");

        // The planner skips it: the only route left goes through the replica that stays.
        var view = await pool.Directory.GetView();
        Assert.DoesNotContain(view.HealthyShards(modelId), s => s.NodeId == "leaves");
        Assert.Equal("draining", view.Shards.Single(s => s.Status.NodeId == "leaves").Problem);
        Assert.Equal(["stays"], view.PlanRoute(modelId, 4, 64)!.Select(s => s.NodeId));

        // A new session on the draining node is refused with the status the gateway answers by trying a replica.
        var refused = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var channel = leaving.Channel();
            await using var client = await Channels.OpenAsync(channel, pool.OpenMessage("too-late", modelId, 64, [leavingShard]), head.Width);
        });
        output.WriteLine($"new session while draining: {refused.StatusCode} {refused.Status.Detail}");
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);

        // The session in use keeps working, with the same results, until its owner closes it.
        await inUse.StepAsync(41);
        await inUse.StepAsync(42);
        await inUse.StepAsync(43);
        Assert.False(leaving.HasExited, "the node left before its open session finished");
        await inUse.Client.CloseAsync(StepTimeout);
        var closedAt = sinceSigterm.Elapsed;

        var code = await leaving.WaitForExitAsync(drainTimeout);
        var exitedAt = sinceSigterm.Elapsed;
        output.WriteLine($"session closed {closedAt.TotalSeconds:F1} s after SIGTERM; process exited {(exitedAt - closedAt).TotalSeconds:F1} s later, code {code}");
        Assert.Equal(0, code);
        // It left because the session finished, not at the drain deadline.
        Assert.True(exitedAt < drainTimeout, $"exited {exitedAt.TotalSeconds:F1} s after SIGTERM, not before the {drainTimeout.TotalSeconds:F0} s deadline");
        Assert.True(Logged(leaving, "1 sessions finished, 0 ended at the deadline"), "drain summary missing from the node's log");
        Assert.True(Logged(leaving, "layers [0, 4) from the pool"), "the shard was not withdrawn on shutdown");
        Assert.False(Logged(leaving, "non-graceful"), "the silo did not leave the cluster gracefully");
        await ProcessPool.WaitForAsync(async () => (await pool.Directory.GetView()).Shards.All(s => s.Status.NodeId != "leaves"), ViewTimeout,
            "the shard withdrawn from the pool");
    }

    [Fact]
    public async Task Sigterm_ends_a_session_that_never_finishes_at_the_drain_deadline()
    {
        var drainTimeout = TimeSpan.FromSeconds(6);
        var model = TestModels.Small(GgmlType.Q8_0);
        using var lease = SharedModel.Acquire(model);
        var modelId = lease.Model.Info.ModelId;
        using var head = new ModelHead(lease.Model, threads: 1);
        using var oracle = new LayerSpan(lease.Model, 0, 4, new SpanOptions { Threads = 1 });
        await using var pool = await ProcessPool.StartAsync(output, model,
        [
            new NodeSpec("stuck", 0, 4, new Dictionary<string, string> { ["Potluck__Node__DrainTimeout"] = $"{drainTimeout.TotalSeconds}" }),
        ]);
        var node = pool.Nodes[0];
        await ProcessPool.WaitForAsync(async () => (await pool.Directory.GetView()).HealthyShards(modelId).Count == 1, ViewTimeout, "the shard healthy");
        var shard = (await pool.Directory.GetView()).HealthyShards(modelId)[0];

        await using var never = await CheckedSession.OpenAsync(node, pool.OpenMessage("never-closed", modelId, 64, [shard]), head, oracle);
        await never.StepAsync(1);

        node.Terminate();
        var sinceSigterm = Stopwatch.StartNew();
        await ProcessPool.WaitForAsync(() => Task.FromResult(Logged(node, "draining: 1 sessions in use")), ViewTimeout, "the node starts draining");
        // Still served during the drain.
        await never.StepAsync(77);

        await ProcessPool.WaitForAsync(() => Task.FromResult(Logged(node, "ended 1 sessions still in use")), drainTimeout + ViewTimeout,
            "the drain deadline");
        var deadlineAt = sinceSigterm.Elapsed;
        Assert.True(deadlineAt >= drainTimeout, $"session ended {deadlineAt.TotalSeconds:F1} s after SIGTERM, before the {drainTimeout.TotalSeconds:F0} s drain deadline");

        // The stream ended with an error status: what the gateway treats as a stage failure and re-routes.
        var ended = await Assert.ThrowsAsync<RpcException>(() => never.StepAsync(5));
        output.WriteLine($"step after the deadline: {ended.StatusCode} {ended.Status.Detail}");
        Assert.Equal(StatusCode.Cancelled, ended.StatusCode);

        var code = await node.WaitForExitAsync(ViewTimeout);
        var exitedAt = sinceSigterm.Elapsed;
        output.WriteLine($"drain deadline {deadlineAt.TotalSeconds:F1} s after SIGTERM (drain timeout {drainTimeout.TotalSeconds:F0} s); exited at {exitedAt.TotalSeconds:F1} s, code {code}");
        Assert.Equal(0, code);
        Assert.True(Logged(node, "0 sessions finished, 1 ended at the deadline"), "drain summary missing from the node's log");
        // The caller still holds its ended stream: that must not eat the time the node needs to leave the pool cleanly.
        Assert.True(Logged(node, "layers [0, 4) from the pool"), "the shard was not withdrawn on shutdown");
        Assert.False(Logged(node, "non-graceful"), "the silo did not leave the cluster gracefully");
    }
}
