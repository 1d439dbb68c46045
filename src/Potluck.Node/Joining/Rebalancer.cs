using System.Diagnostics;
using Potluck.Cluster.Joining;
using Potluck.Inference.Gguf;
using Potluck.Cluster;

namespace Potluck.Node.Joining;

/// <summary>One running node process of a rebalancing node: its options and its exit.</summary>
public interface ISpanProcess
{
    NodeOptions Options { get; }
    Task<int> Exited { get; }
    bool HasExited { get; }

    /// <summary>SIGTERM (the node drains), then SIGKILL after <paramref name="grace"/>; the exit code.</summary>
    Task<int> StopAsync(TimeSpan grace);
}

/// <summary>Starts a node process holding the span of <paramref name="options"/> (the CLI: `potluck node --layers A:B ...` as a child).</summary>
public delegate ISpanProcess SpanProcessLauncher(NodeOptions options, int generation);

/// <summary>
/// `potluck node --join URL --rebalance`: the node runs as a child process, and every period the pool is re-read.
/// When <see cref="RebalancePlanner"/> says the node's span is better spent elsewhere, the new span starts as a second
/// child on the other port pair, the move waits until the gateway lists it as healthy, and only then the old child
/// gets SIGTERM (it drains), so the layers it held never lose their last holder.
/// </summary>
/// <param name="Options">The first span's options (ports, host, membership as settled by joining).</param>
/// <param name="ExplicitNodeId">The node id when given; children then alternate between it and "ID-b".</param>
public sealed record RebalancePlan(Uri Gateway, NodeOptions Options, ModelInfo Model, NodeCapacity Capacity, double? MsPerLayer,
    string? ExplicitNodeId, TimeSpan Period, bool Verbose)
{
    /// <summary>The pool endpoint and this node's credential: the pool's spans are read over mutual TLS.</summary>
    public Uri? PoolUrl { get; init; }
    public Potluck.Security.MemberCredential? Credential { get; init; }

    internal Task<PoolJoinInfo> FetchPoolAsync(CancellationToken ct) =>
        PoolUrl is null || Credential is null
            ? throw new PoolJoinException("rebalancing needs the pool endpoint and a member certificate")
            : PoolJoinClient.FetchAsync(PoolUrl, Credential, PoolJoinClient.DefaultTimeout, ct);
}

public sealed class Rebalancer(RebalancePlan plan, SpanProcessLauncher launch, TextWriter output, TextWriter errors)
{
    /// <summary>How long a new child may take to load and show up healthy in /api/join.</summary>
    public static readonly TimeSpan ServingTimeout = TimeSpan.FromMinutes(3);

    /// <summary>
    /// SIGTERM grace before SIGKILL: the node's whole shutdown (its drain timeout for open sessions, then leaving the
    /// cluster) plus a margin for a busy machine.
    /// </summary>
    public static TimeSpan StopGrace(NodeOptions options) => options.ShutdownTimeout + TimeSpan.FromSeconds(10);

    private sealed record Child(int Generation, ISpanProcess Process)
    {
        public NodeOptions Options => Process.Options;
        public string NodeId => Options.ResolvedNodeId;
        public string Span => LayerRange.Format(Options.LayerStart, Options.LayerEnd);
    }

    /// <summary>Runs until <paramref name="stop"/>; returns 0 then, or the exit code of a child that ended on its own.</summary>
    public async Task<int> RunAsync(CancellationToken stop)
    {
        var grace = StopGrace(plan.Options);
        var current = Start(generation: 0, plan.Options.LayerStart, plan.Options.LayerEnd);
        var notServing = await WaitUntilServingAsync(current, stop);
        if (notServing is not null)
        {
            if (stop.IsCancellationRequested) return 0;
            errors.WriteLine($"potluck node: {notServing}");
            return current.Process.HasExited ? Math.Max(1, await current.Process.Exited) : 1;
        }
        output.WriteLine($"potluck node: {current.NodeId} serves layers {current.Span}; checking the pool every {plan.Period.TotalSeconds:F0} s (--rebalance)");

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
                errors.WriteLine($"potluck node: error: the node process {current.NodeId} {current.Span} exited with code {code}");
                return code == 0 ? 1 : code;
            }

            PoolJoinInfo pool;
            try
            {
                pool = await plan.FetchPoolAsync(stop);
            }
            catch (Exception e) when (e is PoolJoinException or PoolRefusedException)
            {
                errors.WriteLine($"potluck node: warning: rebalance check skipped: {e.Message}");
                continue;
            }
            var decision = RebalancePlanner.Consider(plan.Model.LayerCount, pool.Spans, current.NodeId, plan.Capacity, plan.MsPerLayer);
            if (decision.MoveTo is not { } target)
            {
                // Say why only when it changes, so a steady pool does not fill the log.
                if (decision.Reason != lastReason && plan.Verbose) output.WriteLine($"potluck node: rebalance: {decision.Reason}");
                lastReason = decision.Reason;
                continue;
            }
            lastReason = null;
            output.WriteLine($"potluck node: rebalancing: {decision.Reason}; loading layers {LayerRange.Format(target.Start, target.End)} before leaving {current.Span}");
            var next = Start(current.Generation + 1, target.Start, target.End);
            var failure = await WaitUntilServingAsync(next, stop);
            if (failure is not null)
            {
                await next.Process.StopAsync(grace);
                if (stop.IsCancellationRequested) break;
                errors.WriteLine($"potluck node: warning: rebalance to {next.Span} abandoned, keeping {current.Span}: {failure}");
                continue;
            }
            output.WriteLine($"potluck node: {next.NodeId} serves layers {next.Span}; stopping {current.NodeId} {current.Span}");
            var clock = Stopwatch.StartNew();
            var exit = await current.Process.StopAsync(grace);
            output.WriteLine($"potluck node: {current.NodeId} left after {clock.Elapsed.TotalSeconds:F1} s (exit {exit}); moved to layers {next.Span}");
            current = next;
        }
        // Asked to stop: the launcher's owner stops the child (SIGTERM, it drains) and waits.
        return 0;
    }

    private Child Start(int generation, int start, int end)
    {
        var options = OptionsFor(generation) with { LayerStart = start, LayerEnd = end };
        output.WriteLine($"potluck node: starting {options.ResolvedNodeId} for layers {LayerRange.Format(start, end)} " +
            (options.GrpcPort == 0 ? "(free ports)" : $"(gRPC {options.GrpcEndpoint}, silo port {options.SiloPort})"));
        return new Child(generation, launch(options, generation));
    }

    /// <summary>
    /// Even generations use the given ports, odd ones the next port of each, so the new span can start while the old
    /// one still serves; node ids differ through the port (default) or an "-b" suffix.
    /// </summary>
    private NodeOptions OptionsFor(int generation)
    {
        var options = plan.Options;
        if (generation % 2 == 0) return options with { NodeId = plan.ExplicitNodeId };
        return options with
        {
            // 0 is "a free port": each child picks its own.
            GrpcPort = options.GrpcPort == 0 ? 0 : options.GrpcPort + 1,
            SiloPort = options.SiloPort == 0 ? 0 : options.SiloPort + 1,
            NodeId = plan.ExplicitNodeId is null ? null : plan.ExplicitNodeId + "-b",
        };
    }

    /// <summary>Polls /api/join until the child's span is listed healthy; returns why not (exit, timeout), null once serving.</summary>
    private async Task<string?> WaitUntilServingAsync(Child child, CancellationToken stop)
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
                var pool = await plan.FetchPoolAsync(stop);
                foreach (var span in pool.Spans)
                {
                    if (span.NodeId == child.NodeId && span.Start == child.Options.LayerStart && span.End == child.Options.LayerEnd && span.Healthy && !span.Joining)
                        return null;
                }
            }
            catch (Exception e) when (e is PoolJoinException or PoolRefusedException)
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
}
