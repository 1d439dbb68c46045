using System.Diagnostics;
using System.Globalization;
using Potluck.Cli.Supervision;
using Potluck.Cluster.Joining;
using Potluck.Inference.Gguf;
using Potluck.Node;
using Potluck.Node.Joining;

namespace Potluck.Cli.Commands;

/// <summary>
/// `potluck node --join URL --rebalance`: this process supervises the node as a child process (`potluck node --layers A-B`)
/// and every period re-reads the pool. When <see cref="RebalancePlanner"/> says the node's span is better spent elsewhere,
/// it starts the new span as a second child on the other port pair, waits until the gateway lists it as healthy, and only
/// then stops the old child with SIGTERM (the node drains), so the layers it held never lose their last holder.
/// </summary>
public static class RebalancingNode
{
    /// <summary>How long a new child may take to load and show up healthy in /api/join.</summary>
    public static readonly TimeSpan ServingTimeout = TimeSpan.FromMinutes(3);

    /// <summary>
    /// SIGTERM grace before SIGKILL: the node's whole shutdown (its --drain-timeout for open sessions, then leaving the
    /// cluster) plus a margin for a busy machine.
    /// </summary>
    public static TimeSpan StopGrace(NodeOptions options) => options.ShutdownTimeout + TimeSpan.FromSeconds(10);

    /// <param name="Options">The first span's options (ports, host, membership as settled by joining).</param>
    /// <param name="ExplicitNodeId">--node-id when given; children then alternate between it and "ID-b".</param>
    public sealed record Plan(Uri Gateway, NodeOptions Options, ModelInfo Model, NodeCapacity Capacity, double? MsPerLayer,
        string? ExplicitNodeId, TimeSpan Period, bool Verbose);

    /// <summary>One node child: which generation (even: the given ports, odd: the next ports), its options and process.</summary>
    private sealed record Child(int Generation, NodeOptions Options, SupervisedProcess Process)
    {
        public string NodeId => Options.ResolvedNodeId;
        public string Span => $"[{Options.LayerStart},{Options.LayerEnd})";
    }

    public static async Task<int> RunAsync(Plan plan, CancellationToken stop)
    {
        var grace = StopGrace(plan.Options);
        await using var supervisor = new ProcessSupervisor(Forward, grace);
        var current = Start(supervisor, plan, generation: 0, plan.Options.LayerStart, plan.Options.LayerEnd);
        var notServing = await WaitUntilServingAsync(plan.Gateway, current, stop);
        if (notServing is not null)
        {
            if (stop.IsCancellationRequested) return ExitCodes.Ok;
            Console.Error.WriteLine($"potluck node: {notServing}");
            return current.Process.HasExited ? Math.Max(1, await current.Process.Exited) : 1;
        }
        Console.Out.WriteLine($"potluck node: {current.NodeId} serves layers {current.Span}; checking the pool every {plan.Period.TotalSeconds:F0} s (--rebalance)");

        string? lastReason = null;
        while (!stop.IsCancellationRequested)
        {
            // ±20 % jitter: two rebalancing nodes started together must not decide in lockstep, or both would move
            // to the same weak span (each before the other's announcement shows) and then both move back.
            var delay = plan.Period * (0.8 + 0.4 * Random.Shared.NextDouble());
            var waited = await Task.WhenAny(current.Process.Exited, Task.Delay(delay, stop));
            if (stop.IsCancellationRequested) break;
            if (waited == current.Process.Exited)
            {
                var code = await current.Process.Exited;
                Console.Error.WriteLine($"potluck node: error: the node process {current.NodeId} {current.Span} exited with code {code}");
                return code == 0 ? 1 : code;
            }

            PoolJoinInfo pool;
            try
            {
                pool = await PoolJoinClient.FetchAsync(plan.Gateway, PoolJoinClient.DefaultTimeout, stop);
            }
            catch (PoolJoinException e)
            {
                Console.Error.WriteLine($"potluck node: warning: rebalance check skipped: {e.Message}");
                continue;
            }
            var decision = RebalancePlanner.Consider(plan.Model.LayerCount, pool.Spans, current.NodeId, plan.Capacity, plan.MsPerLayer);
            if (decision.MoveTo is not { } target)
            {
                // Say why only when it changes, so a steady pool does not fill the log.
                if (decision.Reason != lastReason && plan.Verbose) Console.Out.WriteLine($"potluck node: rebalance: {decision.Reason}");
                lastReason = decision.Reason;
                continue;
            }
            lastReason = null;
            Console.Out.WriteLine($"potluck node: rebalancing: {decision.Reason}; loading layers {target.Start}-{target.End} before leaving {current.Span}");
            var next = Start(supervisor, plan, current.Generation + 1, target.Start, target.End);
            var failure = await WaitUntilServingAsync(plan.Gateway, next, stop);
            if (failure is not null)
            {
                await next.Process.StopAsync(grace);
                if (stop.IsCancellationRequested) break;
                Console.Error.WriteLine($"potluck node: warning: rebalance to {next.Span} abandoned, keeping {current.Span}: {failure}");
                continue;
            }
            Console.Out.WriteLine($"potluck node: {next.NodeId} serves layers {next.Span}; stopping {current.NodeId} {current.Span}");
            var clock = Stopwatch.StartNew();
            var exit = await current.Process.StopAsync(grace);
            Console.Out.WriteLine($"potluck node: {current.NodeId} left after {clock.Elapsed.TotalSeconds:F1} s (exit {exit}); moved to layers {next.Span}");
            current = next;
        }
        // Asked to stop: the supervisor's dispose sends SIGTERM to the node (it drains) and waits.
        return ExitCodes.Ok;
    }

    private static Child Start(ProcessSupervisor supervisor, Plan plan, int generation, int start, int end)
    {
        var options = OptionsFor(plan, generation) with { LayerStart = start, LayerEnd = end };
        var arguments = new List<string>
        {
            "node", "--model", options.ModelPath, "--layers", $"{start}-{end}", "--join", plan.Gateway.ToString(),
            "--advertise", options.AdvertisedHost, "--port", options.GrpcPort.ToString(CultureInfo.InvariantCulture),
            "--silo-port", options.SiloPort.ToString(CultureInfo.InvariantCulture), "--cluster-id", options.ClusterId,
            "--threads", options.Threads.ToString(CultureInfo.InvariantCulture), "--max-rows", options.MaxRowsPerStep.ToString(CultureInfo.InvariantCulture),
            "--drain-timeout", options.DrainTimeout.TotalSeconds.ToString("R", CultureInfo.InvariantCulture),
            "--parent-pid", Environment.ProcessId.ToString(CultureInfo.InvariantCulture),
        };
        if (options.NodeId is not null) arguments.AddRange(["--node-id", options.NodeId]);
        if (options.ListenAddress is not null) arguments.AddRange(["--listen", options.ListenAddress]);
        if (options.RedisConnectionString is not null) arguments.AddRange(["--redis", options.RedisConnectionString]);
        if (options.KvBudgetTokens is { } kv) arguments.AddRange(["--kv-tokens", kv.ToString(CultureInfo.InvariantCulture)]);
        if (options.FastFailureDetection) arguments.Add("--fast-failure-detection");
        if (plan.Verbose) arguments.Add("--verbose");
        // Own session: a Ctrl+C in the terminal reaches only this process, which then stops the child in order.
        // Supervisor names must be unique; generation 2 reuses generation 0's ports and so its default node id.
        var name = generation < 2 ? options.ResolvedNodeId : $"{options.ResolvedNodeId}#{generation}";
        var spec = SelfLauncher.Spec(name, arguments) with { OwnSession = true };
        Console.Out.WriteLine($"potluck node: starting {options.ResolvedNodeId} for layers [{start},{end}) (gRPC {options.GrpcEndpoint}, silo port {options.SiloPort})");
        return new Child(generation, options, supervisor.Start(spec));
    }

    /// <summary>
    /// Even generations use the ports given on the command line, odd ones the next port of each, so the new span can
    /// start while the old one still serves; node ids differ through the port (default) or an "-b" suffix.
    /// </summary>
    private static NodeOptions OptionsFor(Plan plan, int generation)
    {
        var odd = generation % 2 == 1;
        var options = plan.Options;
        if (!odd) return options with { NodeId = plan.ExplicitNodeId };
        return options with
        {
            GrpcPort = options.GrpcPort + 1,
            SiloPort = options.SiloPort + 1,
            NodeId = plan.ExplicitNodeId is null ? null : plan.ExplicitNodeId + "-b",
        };
    }

    /// <summary>Polls /api/join until the child's span is listed healthy; returns why not (exit, timeout), null once serving.</summary>
    private static async Task<string?> WaitUntilServingAsync(Uri gateway, Child child, CancellationToken stop)
    {
        var clock = Stopwatch.StartNew();
        var lastProblem = "not listed yet";
        while (clock.Elapsed < ServingTimeout)
        {
            if (stop.IsCancellationRequested) return "stopped";
            if (child.Process.HasExited)
                return $"the node process {child.NodeId} for layers {child.Span} exited with code {await child.Process.Exited} before serving";
            try
            {
                var pool = await PoolJoinClient.FetchAsync(gateway, PoolJoinClient.DefaultTimeout, stop);
                foreach (var span in pool.Spans)
                {
                    if (span.NodeId == child.NodeId && span.Start == child.Options.LayerStart && span.End == child.Options.LayerEnd && span.Healthy && !span.Joining)
                        return null;
                }
            }
            catch (PoolJoinException e)
            {
                lastProblem = e.Message;
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return "stopped";
            }
            try
            {
                await Task.Delay(500, stop);
            }
            catch (OperationCanceledException)
            {
                return "stopped";
            }
        }
        return $"{child.NodeId} did not serve layers {child.Span} within {ServingTimeout.TotalSeconds:F0} s ({lastProblem})";
    }

    private static void Forward(SupervisedProcess child, string line, bool isError)
    {
        var text = $"[{child.Name}] {line}";
        if (isError) Console.Error.WriteLine(text);
        else Console.Out.WriteLine(text);
    }
}
