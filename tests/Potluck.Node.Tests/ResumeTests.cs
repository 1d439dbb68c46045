using Potluck.Protocol.V1;
using Potluck.Protocol;
using Potluck.Inference.Gguf;
using Potluck.Node.Compute;

namespace Potluck.Node.Tests;

/// <summary>
/// The resume protocol between real stages (in-process nodes, real gRPC on loopback, F32 wire so results compare
/// exactly): a route breaks after some steps, and the session is resumed on a route where one stage is replaced.
/// Surviving stages keep their KV; the replacement is rebuilt from its upstream stage's output log (or, for the first
/// stage, from rebuild steps the caller sends); every later step must give exactly the uninterrupted run's output.
/// </summary>
[ProcessTest]
public sealed class ResumeTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    // A prompt of 5 rows, then single rows: the shapes a real session has.
    private static readonly int[] StepRows = [5, 1, 1, 1, 1, 1, 1];
    private const int BreakAfterSteps = 3;
    private const int MaxTokens = 64;

    [Fact]
    public async Task A_replaced_middle_stage_is_rebuilt_from_the_upstream_log_and_the_outputs_match_an_uninterrupted_run()
    {
        // 0: [0,2)  1: [2,3)  2: [2,3) replica  3: [3,4)
        await using var pool = await InProcessPool.StartAsync(TestModels.Small(GgmlType.Q8_0), [(0, 2), (2, 3), (2, 3), (3, 4)], prefix: "rs");
        var inputs = Inputs(pool.Host(0).Width);
        var expected = await RunAsync(pool, "reference", [0, 1, 3], inputs, 0, StepRows.Length, resume: null);

        var broken = await OpenAsync(pool, "resumed", [0, 1, 3], resume: null);
        var length = 0;
        for (var i = 0; i < BreakAfterSteps; i++) length = await StepAsync(broken, inputs, i, length, new float[pool.Host(0).Width]);
        // The route breaks: every stage detaches the session and keeps its KV.
        await broken.DisposeAsync();
        await WaitAsync(() => pool.Host(0).DetachedSessions == 1 && pool.Host(3).DetachedSessions == 1, "stages detach the session");

        var resumed = await OpenAsync(pool, "resumed", [0, 2, 3], resume: (length, BreakAfterSteps));
        Assert.Equal(new[] { length, 0, length }, resumed.Opened.Stages.Select(s => s.SessionLength));
        var outputs = await ContinueAsync(resumed, inputs, BreakAfterSteps, length, pool.Host(0).Width);
        for (var i = BreakAfterSteps; i < StepRows.Length; i++) Assert.Equal(expected[i], outputs[i - BreakAfterSteps]);
        // The replica holds the whole session now; the stage it replaced still holds its detached copy until freed.
        Assert.Equal(StepRows.Sum(), pool.Host(2).SessionLength("resumed"));
        Assert.Equal(1, pool.Host(1).DetachedSessions);
        Assert.True(pool.Host(1).Close("resumed", cancelled: true));
        await resumed.CloseAsync(Timeout);
    }

    [Fact]
    public async Task A_replaced_first_stage_is_rebuilt_from_the_callers_rebuild_steps_and_survivors_are_not_sent_them_again()
    {
        // 0: [0,2)  1: [0,2) replica  2: [2,4)
        await using var pool = await InProcessPool.StartAsync(TestModels.Small(GgmlType.Q8_0), [(0, 2), (0, 2), (2, 4)], prefix: "rf");
        var width = pool.Host(0).Width;
        var inputs = Inputs(width);
        var expected = await RunAsync(pool, "reference", [0, 2], inputs, 0, StepRows.Length, resume: null);

        var broken = await OpenAsync(pool, "first", [0, 2], resume: null);
        var length = 0;
        for (var i = 0; i < BreakAfterSteps; i++) length = await StepAsync(broken, inputs, i, length, new float[width]);
        await broken.DisposeAsync();
        await WaitAsync(() => pool.Host(2).DetachedSessions == 1, "the last stage detaches the session");
        var lastStageSteps = pool.Host(2).StepsCompleted;

        var resumed = await OpenAsync(pool, "first", [1, 2], resume: (length, BreakAfterSteps));
        Assert.Equal(new[] { 0, length }, resumed.Opened.Stages.Select(s => s.SessionLength));
        // Rebuild the new first stage from the original inputs, in the original steps.
        var position = 0;
        for (var i = 0; i < BreakAfterSteps; i++)
        {
            await resumed.RebuildAsync(inputs[i], StepRows[i], position, Timeout);
            position += StepRows[i];
        }
        var outputs = await ContinueAsync(resumed, inputs, BreakAfterSteps, length, width);
        for (var i = BreakAfterSteps; i < StepRows.Length; i++) Assert.Equal(expected[i], outputs[i - BreakAfterSteps]);
        // The surviving last stage computed only the new steps: the rebuild stopped at the replaced stage.
        Assert.Equal(StepRows.Length - BreakAfterSteps, pool.Host(2).StepsCompleted - lastStageSteps);
        await resumed.CloseAsync(Timeout);
        Assert.True(pool.Host(0).Close("first", cancelled: true));
    }

    [Fact]
    public async Task A_detached_session_is_freed_by_a_control_plane_close_and_rebuild_steps_are_validated()
    {
        await using var pool = await InProcessPool.StartAsync(TestModels.Small(GgmlType.Q8_0), [(0, 4)], prefix: "rv");
        var width = pool.Host(0).Width;
        var inputs = Inputs(width);
        var client = await OpenAsync(pool, "v", [0], resume: null);
        await StepAsync(client, inputs, 0, 0, new float[width]);
        // A rebuild step after the session's first normal step is refused.
        var late = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() =>
            client.SendAsync(client.PrepareStep(inputs[1], 1, 5, truncateTo: null, lastRowOnly: true, rebuild: true), Timeout));
        Assert.Equal(Grpc.Core.StatusCode.FailedPrecondition, late.StatusCode);
        Assert.Equal(HopFailureReason.RebuildTooLate, HopFailure.Read(late).Reason);
        // A rejected frame frees the session rather than detaching it.
        await WaitAsync(() => pool.Host(0).OpenSessions == 0, "the rejected session is freed");

        var detached = await OpenAsync(pool, "w", [0], resume: null);
        await StepAsync(detached, inputs, 0, 0, new float[width]);
        await detached.DisposeAsync();
        await WaitAsync(() => pool.Host(0).DetachedSessions == 1, "the session is detached");
        Assert.True(pool.Host(0).FreeKvTokens < pool.Host(0).KvBudgetTokens);
        Assert.True(pool.Host(0).Close("w", cancelled: true));
        Assert.Equal(pool.Host(0).KvBudgetTokens, pool.Host(0).FreeKvTokens);
    }

    private static float[][] Inputs(int width)
    {
        var rng = new Random(77);
        var inputs = new float[StepRows.Length][];
        for (var i = 0; i < inputs.Length; i++)
        {
            inputs[i] = new float[StepRows[i] * width];
            for (var j = 0; j < inputs[i].Length; j++) inputs[i][j] = (float)(rng.NextDouble() - 0.5);
        }
        return inputs;
    }

    private static async Task<SessionHopClient> OpenAsync(InProcessPool pool, string sessionId, int[] route, (int Length, ulong LastStepId)? resume)
    {
        var hops = route.Select(i => new RouteHop
        {
            NodeId = pool.Options[i].ResolvedNodeId, Endpoint = pool.Options[i].GrpcEndpoint, LayerStart = pool.Options[i].LayerStart, LayerEnd = pool.Options[i].LayerEnd,
        }).ToList();
        var open = HopFrames.Open(sessionId, pool.Host(0).ModelId, MaxTokens, HiddenType.F32, hops,
            TestTickets.For(sessionId, hops, MaxTokens, resume is not null), resume is { } r ? new ResumePoint(r.Length, r.LastStepId) : null);
        return await Channels.OpenAsync(Channels.For(pool.Options[route[0]]), open, pool.Host(0).Width);
    }

    private static async Task<int> StepAsync(SessionHopClient client, float[][] inputs, int step, int position, float[] lastRow)
    {
        await client.StepAsync(inputs[step], StepRows[step], position, lastRowOnly: true, lastRow, Timeout);
        return position + StepRows[step];
    }

    private static async Task<List<float[]>> ContinueAsync(SessionHopClient client, float[][] inputs, int from, int position, int width)
    {
        var outputs = new List<float[]>();
        for (var i = from; i < StepRows.Length; i++)
        {
            var lastRow = new float[width];
            position = await StepAsync(client, inputs, i, position, lastRow);
            outputs.Add(lastRow);
        }
        return outputs;
    }

    private static async Task<List<float[]>> RunAsync(InProcessPool pool, string sessionId, int[] route, float[][] inputs, int from, int to,
        (int, ulong)? resume)
    {
        var client = await OpenAsync(pool, sessionId, route, resume);
        var outputs = await ContinueAsync(client, inputs, from, 0, pool.Host(0).Width);
        await client.CloseAsync(Timeout);
        await client.DisposeAsync();
        return outputs.GetRange(0, to - from);
    }

    private static async Task WaitAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"timed out waiting until {what}");
            await Task.Delay(20);
        }
    }
}

/// <summary>The output log's bookkeeping: step boundaries, rewinds, and the node-wide budget.</summary>
public sealed class StageOutputLogTests
{
    private static byte[] Rows(int rows, byte value) => Enumerable.Repeat(value, rows * 8).ToArray();

    [Fact]
    public void Keeps_rows_by_position_and_the_steps_they_were_sent_in()
    {
        var log = new StageOutputLog(new OutputLogBudget(1 << 20), maxRows: 100);
        log.Append(0, 5, HiddenType.F16, Rows(5, 1));
        log.Append(5, 1, HiddenType.F16, Rows(1, 2));
        log.Append(6, 1, HiddenType.F16, Rows(1, 3));
        var steps = new List<(int Start, int Rows)>();
        Assert.Null(log.TryGetSteps(0, steps));
        Assert.Equal([(0, 5), (5, 1), (6, 1)], steps);
        Assert.Null(log.TryGetSteps(5, steps));
        Assert.Equal([(5, 1), (6, 1)], steps);
        Assert.Contains("not a step boundary", log.TryGetSteps(3, steps));
        Assert.Equal(Rows(1, 2), log.Rows(5, 1).ToArray());

        // A rewind inside the prompt keeps its first rows as a shorter step; new rows follow it.
        log.Truncate(3);
        log.Append(3, 1, HiddenType.F16, Rows(1, 4));
        Assert.Null(log.TryGetSteps(0, steps));
        Assert.Equal([(0, 3), (3, 1)], steps);
        Assert.Equal(Rows(1, 4), log.Rows(3, 1).ToArray());
    }

    [Fact]
    public void A_log_over_the_node_budget_is_dropped_and_says_why_and_gives_its_bytes_back()
    {
        var budget = new OutputLogBudget(64 * 8 + 10);
        var first = new StageOutputLog(budget, maxRows: 1000);
        first.Append(0, 10, HiddenType.F16, Rows(10, 1));
        Assert.Equal(64 * 8, budget.UsedBytes);
        var second = new StageOutputLog(budget, maxRows: 1000);
        second.Append(0, 1, HiddenType.F16, Rows(1, 1));
        var steps = new List<(int Start, int Rows)>();
        Assert.Contains("budget", second.TryGetSteps(0, steps));
        Assert.Equal(64 * 8, budget.UsedBytes);
        first.Release();
        Assert.Equal(0, budget.UsedBytes);
        // A gap (a step that does not follow) also drops the log instead of keeping a wrong one.
        var gapped = new StageOutputLog(budget, maxRows: 1000);
        gapped.Append(0, 1, HiddenType.F16, Rows(1, 1));
        gapped.Append(5, 1, HiddenType.F16, Rows(1, 1));
        Assert.Contains("does not follow", gapped.TryGetSteps(0, steps));
    }
}
