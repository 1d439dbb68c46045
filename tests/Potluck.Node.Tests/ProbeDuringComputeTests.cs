using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Potluck.Cluster;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;
using Potluck.Node.Compute;
using Potluck.Node.Control;
using Potluck.Protocol.V1;
using Xunit.Abstractions;
using GrpcStage = Potluck.Protocol.V1.Stage;

namespace Potluck.Node.Tests;

/// <summary>
/// A long forward pass must not make a node look dead: the health probe (Describe), the shard status (what the
/// reporter sends the pool and the shard grain answers) and the span's counters answer while a real multi-second
/// prefill holds the compute thread.
/// </summary>
[Collection("timing")]
[ProcessTest]
public sealed class ProbeDuringComputeTests(ITestOutputHelper output)
{
    /// <summary>
    /// 512 wide, 4 layers, 4096 context: a prefill of thousands of rows takes seconds (with 2 layers, 4096 rows took only
    /// 1.3 s on a quiet machine, under the minimum below).
    /// </summary>
    private static readonly TestModelSpec LongPrefillModel = new()
    {
        EmbeddingLength = 512, HeadCount = 8, KvHeadCount = 4, FeedForwardLength = 1536, LayerCount = 4, ContextLength = 4096,
    };

    // A lock-free read answers in microseconds; the bound leaves room for a busy shared CI machine (250 ms stalls seen at
    // load 11 on 2 cores), while a probe that waits behind the forward waits most of the prefill (seconds).
    private static readonly TimeSpan ProbeBound = TimeSpan.FromMilliseconds(500);
    private static readonly TimeSpan MinimumPrefill = ProbeBound * 4;
    private static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(30);
    private const string PoolControl = "thread pool round trip (control)";
    private const int MaxRounds = 3;

    [Fact]
    public async Task Status_and_probe_calls_answer_while_a_long_prefill_holds_the_compute_thread()
    {
        var model = TestModels.Get(LongPrefillModel, GgmlType.Q8_0);
        await using var pool = await InProcessPool.StartAsync(model, [(0, 4)], kvBudgetTokens: 8192, prefix: "probe");
        var host = pool.Host(0);
        var status = pool.Apps[0].Services.GetRequiredService<ShardStatusSource>();
        var options = pool.Options[0];
        var shard = pool.Grains.GetGrain<IShardGrain>(ShardKeys.For(options.ResolvedNodeId, options.LayerStart, options.LayerEnd));
        using var channel = Channels.For(options);
        var stage = new GrpcStage.StageClient(channel);
        var probes = new (string Name, Func<Task> Call)[]
        {
            // The control: touches nothing of the node, so when it stalls the thread pool itself stalled (seen once in CI:
            // three probes and the pool stuck 1.5 s together on a loaded machine), which says nothing about the forward.
            (PoolControl, () => Task.Run(() => { })),
            ("SpanHost.FreeKvTokens", () => Task.Run(() => _ = host.FreeKvTokens)),
            ("SpanHost.SessionLength", () => Task.Run(() => _ = host.SessionLength("warm-up"))),
            ("ShardStatusSource.Current", () => Task.Run(() => _ = status.Current())),
            ("Stage.Describe (gRPC)", async () => await stage.DescribeAsync(new DescribeRequest(), deadline: DateTime.UtcNow + CallTimeout)),
            ("IShardGrain.GetStatus", async () => await shard.GetStatus().WaitAsync(CallTimeout)),
        };
        host.Open("warm-up", 1);
        // First calls connect, activate the grain and JIT: not what is measured.
        foreach (var (_, call) in probes) await call();

        // 2048 rows take about two seconds on a shared CI core; a machine that finishes sooner gets 4096. A round in
        // which the control stalled is measured again (a probe that waits behind the forward fails every round).
        var rows = 2048;
        TimeSpan prefillTime = default;
        double[] worst = [];
        int[] rounds = [];
        for (int attempt = 0, judged = 0; judged < MaxRounds; attempt++)
        {
            (prefillTime, worst, rounds) = await PrefillWhileProbingAsync(host, shard, probes, $"long-{attempt}", rows);
            if (prefillTime < MinimumPrefill && rows < 4096)
            {
                rows = 4096;
                continue;
            }
            judged++;
            if (worst[0] < ProbeBound.TotalMilliseconds) break;
            output.WriteLine($"the thread pool itself stalled {worst[0]:F0} ms in this round; measuring again");
        }

        Assert.True(prefillTime >= MinimumPrefill, $"the prefill took only {prefillTime.TotalMilliseconds:F0} ms; it must run long to show anything");
        Assert.True(worst[0] < ProbeBound.TotalMilliseconds, $"the thread pool stalled {worst[0]:F0} ms in each of {MaxRounds} rounds: nothing can be judged");
        for (var p = 1; p < probes.Length; p++)
        {
            Assert.True(worst[p] < ProbeBound.TotalMilliseconds,
                $"{probes[p].Name} took {worst[p]:F0} ms during a {prefillTime.TotalMilliseconds:F0} ms prefill (bound {ProbeBound.TotalMilliseconds:F0} ms)");
            Assert.True(rounds[p] >= 3, $"{probes[p].Name} ran only {rounds[p]} times during the prefill");
        }
    }

    /// <summary>
    /// Runs one prefill of <paramref name="rows"/> rows on a new session while every probe runs in its own loop (a probe
    /// stuck behind the forward does not hide the others), and a control-plane close of another session waits for the
    /// compute thread. Returns the prefill's time and each probe's worst latency and call count.
    /// </summary>
    private async Task<(TimeSpan Prefill, double[] WorstMs, int[] Rounds)> PrefillWhileProbingAsync(SpanHost host, IShardGrain shard,
        (string Name, Func<Task> Call)[] probes, string sessionId, int rows)
    {
        var session = host.Open(sessionId, rows);
        host.Open(sessionId + "-closed-meanwhile", 16);
        var rng = new Random(5);
        var input = session.RentInput(rows);
        for (var i = 0; i < input.Length; i++) input[i] = (float)(rng.NextDouble() - 0.5) * 0.2f;

        using var heartbeat = new Heartbeat();
        var clock = Stopwatch.StartNew();
        var prefill = session.StepAsync(-1, 0, rows, lastRowOnly: true).AsTask();
        // The compute thread takes the step at once; probes start once it surely holds the forward.
        await Task.Delay(TimeSpan.FromMilliseconds(200));
        var close = shard.CloseSession(sessionId + "-closed-meanwhile", cancelled: false);
        var worst = new double[probes.Length];
        var rounds = new int[probes.Length];
        var loops = new Task[probes.Length];
        for (var p = 0; p < probes.Length; p++)
        {
            var index = p;
            loops[p] = Task.Run(async () =>
            {
                while (!prefill.IsCompleted)
                {
                    var started = Stopwatch.GetTimestamp();
                    await probes[index].Call();
                    var ended = Stopwatch.GetTimestamp();
                    var ms = Stopwatch.GetElapsedTime(started, ended).TotalMilliseconds;
                    // Time the whole process stood still (the heartbeat thread stalled too) is not waiting behind the forward.
                    var paused = heartbeat.PausedMs(started, ended);
                    if (ms > 100)
                        output.WriteLine($"  slow call: {probes[index].Name} {ms:F0} ms ({paused:F0} ms of it with the whole process paused), " +
                            $"from {clock.ElapsedMilliseconds - ms:F0} ms into the prefill");
                    worst[index] = Math.Max(worst[index], ms - paused);
                    rounds[index]++;
                    await Task.Delay(20);
                }
            });
        }
        Assert.Equal(1, await prefill.WaitAsync(CallTimeout));
        var prefillTime = clock.Elapsed;
        await Task.WhenAll(loops).WaitAsync(CallTimeout * 2);
        Assert.True(await close.WaitAsync(CallTimeout));
        Assert.Equal(rows, host.SessionLength(sessionId));
        Assert.True(host.Close(sessionId, cancelled: false));

        output.WriteLine($"prefill of {rows} rows: {prefillTime.TotalMilliseconds:F0} ms");
        for (var p = 0; p < probes.Length; p++) output.WriteLine($"  {probes[p].Name}: worst {worst[p]:F1} ms over {rounds[p]} calls");
        return (prefillTime, worst, rounds);
    }
}

/// <summary>
/// A dedicated thread that wakes every 10 ms and records each gap over 50 ms: the stretches when the whole process
/// stood still (a garbage collection, or a 2-core machine giving it no core). A probe that waits behind the forward
/// waits while the heartbeat keeps ticking; a probe slowed by a pause is slowed together with it.
/// </summary>
internal sealed class Heartbeat : IDisposable
{
    private static readonly long Gap = Stopwatch.Frequency / 20;
    private readonly List<(long From, long To)> _gaps = [];
    private readonly Thread _thread;
    private volatile bool _stop;

    public Heartbeat()
    {
        _thread = new Thread(Run) { IsBackground = true, Name = "probe-heartbeat" };
        _thread.Start();
    }

    private void Run()
    {
        var last = Stopwatch.GetTimestamp();
        while (!_stop)
        {
            Thread.Sleep(10);
            var now = Stopwatch.GetTimestamp();
            if (now - last > Gap) lock (_gaps) _gaps.Add((last, now));
            last = now;
        }
    }

    /// <summary>Milliseconds of [<paramref name="from"/>, <paramref name="to"/>] (timestamps) inside recorded gaps.</summary>
    public double PausedMs(long from, long to)
    {
        long paused = 0;
        lock (_gaps)
        {
            foreach (var (gapFrom, gapTo) in _gaps)
                paused += Math.Max(0, Math.Min(to, gapTo) - Math.Max(from, gapFrom));
        }
        return paused * 1000.0 / Stopwatch.Frequency;
    }

    public void Dispose()
    {
        _stop = true;
        _thread.Join(TimeSpan.FromSeconds(5));
    }
}
