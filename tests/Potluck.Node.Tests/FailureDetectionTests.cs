using System.Collections.Concurrent;
using System.Diagnostics;
using Potluck.Cluster;
using Potluck.Protocol;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Node.Compute;
using Xunit.Abstractions;

namespace Potluck.Node.Tests;

/// <summary>
/// Failure detection with the production membership settings (not the tests' fast detection), with real node
/// processes: a SIGKILLed node is declared dead within a generous bound, and nodes that are healthy but busy
/// (both cores saturated, steady decode traffic) are never suspected or evicted. Figures go to the test log;
/// docs/architecture.md ("Failure detection") records them.
/// </summary>
[Collection("timing")]
[ProcessTest]
public sealed class FailureDetectionTests(ITestOutputHelper output)
{
    private static readonly TimeSpan ViewTimeout = TimeSpan.FromSeconds(60);

    // Far above the measured figures (SIGKILL about 7 s, a silent node about 36 s), so a loaded machine cannot flake
    // it; a node never declared dead fails it.
    private static readonly TimeSpan DetectionBound = TimeSpan.FromSeconds(120);

    private static readonly TimeSpan LoadDuration = TimeSpan.FromSeconds(60);

    private static readonly NodeSpec[] ThreeWaySplit = [new("fd-a", 0, 1), new("fd-b", 1, 3), new("fd-c", 3, 4)];

    private async Task WaitAllActiveAndHealthyAsync(ProcessPool pool, string modelId)
    {
        await ProcessPool.WaitForAsync(async () => (await pool.Directory.GetView()).HealthyShards(modelId).Count == pool.Nodes.Count, ViewTimeout,
            "every shard healthy");
        await ProcessPool.WaitForAsync(async () =>
        {
            var table = await pool.MembershipAsync();
            return pool.SiloPorts.All(port => ProcessPool.EntryOf(table, port)?.Status == SiloStatus.Active);
        }, ViewTimeout, "every silo active");
    }

    // Two silos: one survivor must be enough to declare the other dead (a gateway and one node).
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Sigkilled_node_is_declared_dead_within_a_bound_with_production_settings(int silos)
    {
        var model = TestModels.Small(GgmlType.Q8_0);
        using var lease = SharedModel.Acquire(model);
        var modelId = lease.Model.Info.ModelId;
        NodeSpec[] specs = silos == 3 ? ThreeWaySplit : [new("fd-a", 0, 4), new("fd-c", 0, 4)];
        await using var pool = await ProcessPool.StartAsync(output, model, specs);
        await WaitAllActiveAndHealthyAsync(pool, modelId);

        // The last node, not the primary: development clustering keeps the membership table on the primary.
        var victim = pool.Nodes[^1];
        var victimPort = pool.SiloPorts[^1];
        victim.Kill();
        var sinceKill = Stopwatch.StartNew();

        TimeSpan? declaredDead = null, leftView = null;
        string? problem = null;
        while (declaredDead is null || leftView is null)
        {
            Assert.True(sinceKill.Elapsed < DetectionBound,
                $"after {DetectionBound.TotalSeconds:F0} s: membership dead {declaredDead?.TotalSeconds:F1}, pool view unhealthy {leftView?.TotalSeconds:F1}");
            if (declaredDead is null && ProcessPool.EntryOf(await pool.MembershipAsync(), victimPort)?.Status == SiloStatus.Dead)
                declaredDead = sinceKill.Elapsed;
            if (leftView is null)
            {
                var shard = (await pool.Directory.GetView()).Shards.SingleOrDefault(s => s.Status.NodeId == victim.NodeId);
                if (shard is null || !shard.Healthy)
                {
                    leftView = sinceKill.Elapsed;
                    problem = shard?.Problem ?? "removed (silo dead)";
                }
            }
            await Task.Delay(100);
        }
        output.WriteLine($"SIGKILL of {victim.NodeId} ({silos} silos): pool view unhealthy after {leftView!.Value.TotalSeconds:F1} s ({problem}); " +
            $"membership declared it dead after {declaredDead!.Value.TotalSeconds:F1} s");

        // The survivors stay in the cluster.
        var table = await pool.MembershipAsync();
        foreach (var port in pool.SiloPorts.SkipLast(1)) Assert.Equal(SiloStatus.Active, ProcessPool.EntryOf(table, port)?.Status);
    }

    /// <summary>
    /// A frozen process (SIGSTOP) still accepts TCP connections but answers nothing, as a machine that lost power or
    /// its network does: probes time out instead of being refused, and Orleans stretches their timeout (up to four
    /// times ProbeTimeout) before it votes. A 10 s stall (a long GC pause, swapping, a Wi-Fi reconnect) must cost no
    /// suspicion; a node that stays silent must still be declared dead within a bound.
    /// </summary>
    [Fact]
    public async Task Node_frozen_for_10_s_is_not_suspected_but_a_silent_node_is_declared_dead_with_production_settings()
    {
        var model = TestModels.Small(GgmlType.Q8_0);
        using var lease = SharedModel.Acquire(model);
        var modelId = lease.Model.Info.ModelId;
        await using var pool = await ProcessPool.StartAsync(output, model, ThreeWaySplit);
        await WaitAllActiveAndHealthyAsync(pool, modelId);
        var frozen = pool.Nodes[2];
        var frozenPort = pool.SiloPorts[2];

        frozen.Freeze();
        await Task.Delay(TimeSpan.FromSeconds(10));
        frozen.Thaw();
        // Votes stay in the table for minutes: one cast during the stall or just after it would show here.
        await Task.Delay(TimeSpan.FromSeconds(15));
        var entry = ProcessPool.EntryOf(await pool.MembershipAsync(), frozenPort);
        output.WriteLine($"after a 10 s freeze: {entry?.Status}, {entry?.SuspectTimes?.Count ?? 0} suspicion votes");
        Assert.Equal(SiloStatus.Active, entry?.Status);
        Assert.Empty(entry!.SuspectTimes ?? []);
        await ProcessPool.WaitForAsync(async () => (await pool.Directory.GetView()).HealthyShards(modelId).Count == 3, ViewTimeout,
            "the frozen node healthy again in the pool view");

        frozen.Freeze();
        var sinceStop = Stopwatch.StartNew();
        var leftView = await ProcessPool.WaitForAsync(async () =>
            !(await pool.Directory.GetView()).Shards.Any(s => s.Status.NodeId == frozen.NodeId && s.Healthy), DetectionBound, "the silent node leaves the pool view");
        // Until the silent silo is declared dead, the others must stay routable.
        var othersUnhealthy = new List<string>();
        await ProcessPool.WaitForAsync(async () =>
        {
            foreach (var shard in (await pool.Directory.GetView()).Shards)
                if (shard.Status.NodeId != frozen.NodeId && !shard.Healthy)
                    othersUnhealthy.Add($"{sinceStop.Elapsed.TotalSeconds:F1} s: {shard.Status.NodeId} {shard.Problem}");
            return ProcessPool.EntryOf(await pool.MembershipAsync(), frozenPort)?.Status == SiloStatus.Dead;
        }, DetectionBound, "the silent node declared dead");
        output.WriteLine($"silent node: pool view unhealthy after {leftView.TotalSeconds:F1} s, membership declared it dead after {sinceStop.Elapsed.TotalSeconds:F1} s; " +
            $"{othersUnhealthy.Count} observations of another shard unhealthy meanwhile");
        foreach (var line in othersUnhealthy.Take(10)) output.WriteLine($"  {line}");
        Assert.Empty(othersUnhealthy);
        // The harness's dispose SIGKILLs it, stopped or not.
    }

    [Fact]
    public async Task Busy_nodes_on_saturated_cores_are_not_suspected_or_evicted_with_production_settings()
    {
        var model = TestModels.Small(GgmlType.Q8_0);
        using var lease = SharedModel.Acquire(model);
        var modelId = lease.Model.Info.ModelId;
        using var head = new ModelHead(lease.Model, threads: 1);
        await using var pool = await ProcessPool.StartAsync(output, model, ThreeWaySplit);
        await WaitAllActiveAndHealthyAsync(pool, modelId);
        var route = (await pool.Directory.GetView()).PlanRoute(modelId, 4, 64)!;
        Assert.Equal(["fd-a", "fd-b", "fd-c"], route.Select(s => s.NodeId));

        using var stop = new CancellationTokenSource(LoadDuration);
        // Spinning threads, two per core: with the node processes' compute and the decode traffic, every core is busy.
        var burners = Enumerable.Range(0, 2 * Environment.ProcessorCount).Select(i =>
        {
            var thread = new Thread(() => { while (!stop.IsCancellationRequested) Thread.SpinWait(10_000); })
                { IsBackground = true, Name = $"cpu-burner-{i}" };
            thread.Start();
            return thread;
        }).ToList();

        var stepMs = new ConcurrentBag<double>();
        var failures = new ConcurrentQueue<string>();
        async Task DecodeLoopAsync(int loop)
        {
            var width = head.Width;
            var hidden = new float[width];
            var output = new float[width];
            using var channel = Channels.For(route[0].GrpcEndpoint, route[0].NodeId, pool.Cluster);
            for (var session = 0; !stop.IsCancellationRequested; session++)
            {
                try
                {
                    await using var client = await Channels.OpenAsync(channel, pool.OpenMessage($"load-{loop}-{session}", modelId, 64, route), width);
                    for (var position = 0; position < 60 && !stop.IsCancellationRequested; position++)
                    {
                        head.Embed([(position * 7 + loop) % 200 + 1], hidden);
                        var started = Stopwatch.GetTimestamp();
                        await client.StepAsync(hidden, 1, position, lastRowOnly: true, output, TimeSpan.FromSeconds(30));
                        stepMs.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                    }
                    await client.CloseAsync(TimeSpan.FromSeconds(30));
                }
                catch (Exception e)
                {
                    failures.Enqueue($"loop {loop} session {session}: {e.GetType().Name}: {e.Message}");
                }
            }
        }

        // What membership thinks of every silo, sampled each second while the load runs.
        var suspicions = new HashSet<string>(StringComparer.Ordinal);
        var notActive = new HashSet<string>(StringComparer.Ordinal);
        async Task SampleMembershipAsync()
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    Record(await pool.MembershipAsync());
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    failures.Enqueue($"membership read: {e.GetType().Name}: {e.Message}");
                }
                await Task.Delay(1000);
            }
        }
        void Record(MembershipEntry[] table)
        {
            foreach (var port in pool.SiloPorts)
            {
                var entry = ProcessPool.EntryOf(table, port);
                if (entry is null || entry.Status != SiloStatus.Active) notActive.Add($"{port}: {entry?.Status.ToString() ?? "missing"}");
                foreach (var (suspector, at) in entry?.SuspectTimes ?? [])
                    suspicions.Add($"{entry!.SiloAddress} suspected by {suspector} at {at:HH:mm:ss.fff}");
            }
        }

        var watch = Stopwatch.StartNew();
        await Task.WhenAll(DecodeLoopAsync(0), DecodeLoopAsync(1), SampleMembershipAsync());
        foreach (var burner in burners) burner.Join();
        var loadSeconds = watch.Elapsed.TotalSeconds;
        // Suspicion votes stay in the table (they expire after minutes), so the final read sees any cast during the run.
        Record(await pool.MembershipAsync());

        var sorted = stepMs.Order().ToArray();
        var suspectLines = pool.Nodes.Sum(n => n.StandardErrorLines.Count(l => l.Contains("suspect", StringComparison.OrdinalIgnoreCase)));
        output.WriteLine($"{loadSeconds:F0} s of load on {Environment.ProcessorCount} cores ({burners.Count} spinning threads + 2 decode loops over 3 node processes), " +
            $"load average {File.ReadAllText("/proc/loadavg").Trim()}: {sorted.Length} steps, p50 {Percentile(sorted, 0.5):F1} ms, p99 {Percentile(sorted, 0.99):F1} ms, " +
            $"max {(sorted.Length > 0 ? sorted[^1] : 0):F1} ms; {suspicions.Count} suspicion votes, {notActive.Count} non-active observations, " +
            $"{suspectLines} node log lines mentioning suspicion, {failures.Count} failures");
        foreach (var line in suspicions.Concat(notActive).Concat(failures)) output.WriteLine($"  {line}");

        Assert.Empty(suspicions);
        Assert.Empty(notActive);
        Assert.Empty(failures);
        Assert.NotEmpty(sorted);
    }

    private static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[(int)Math.Min(sorted.Length - 1, p * sorted.Length)];
}
