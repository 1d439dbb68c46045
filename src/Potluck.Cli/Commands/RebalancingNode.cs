using System.Globalization;
using Potluck.Cli.Supervision;
using Potluck.Node;
using Potluck.Node.Joining;

namespace Potluck.Cli.Commands;

/// <summary>
/// The process side of `potluck node --join URL --rebalance`: the workflow (<see cref="Rebalancer"/>, in the node
/// project) decides when and where to move; this starts each span as a child `potluck node --layers A:B ...` of this
/// executable, in its own session, with its output prefixed by the node id.
/// </summary>
public static class RebalancingNode
{
    public static async Task<int> RunAsync(RebalancePlan plan, CancellationToken stop)
    {
        await using var supervisor = new ProcessSupervisor(Forward, Rebalancer.StopGrace(plan.Options));
        var rebalancer = new Rebalancer(plan, (options, generation) => Start(supervisor, plan, options, generation), Console.Out, Console.Error);
        // On return the supervisor's dispose sends SIGTERM to the child still running (it drains) and waits.
        return await rebalancer.RunAsync(stop);
    }

    private static ISpanProcess Start(ProcessSupervisor supervisor, RebalancePlan plan, NodeOptions options, int generation)
    {
        var arguments = new List<string>
        {
            "node", "--model", options.ModelPath, "--layers", Potluck.Cluster.LayerRange.Input(options.LayerStart, options.LayerEnd), "--join", plan.Gateway.ToString(),
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
        // Supervisor names must be unique; generation 2 reuses generation 0's ports and node id.
        var name = generation < 2 ? options.ResolvedNodeId : $"{options.ResolvedNodeId}#{generation}";
        var spec = SelfLauncher.Spec(name, arguments) with { OwnSession = true };
        return new ChildSpan(options, supervisor.Start(spec));
    }

    private sealed class ChildSpan(NodeOptions options, SupervisedProcess process) : ISpanProcess
    {
        public NodeOptions Options => options;
        public Task<int> Exited => process.Exited;
        public bool HasExited => process.HasExited;
        public Task<int> StopAsync(TimeSpan grace) => process.StopAsync(grace);
    }

    private static void Forward(SupervisedProcess child, string line, bool isError)
    {
        var text = $"[{child.Name}] {line}";
        if (isError) Console.Error.WriteLine(text);
        else Console.Out.WriteLine(text);
    }
}
