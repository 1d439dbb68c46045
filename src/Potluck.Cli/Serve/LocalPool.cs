using System.Net;
using System.Net.Sockets;
using Potluck.Cli.Supervision;

namespace Potluck.Cli.Serve;

/// <summary>What `serve` starts: where the gateway listens and which node holds which layers.</summary>
public sealed record LocalPoolPlan(string ModelPath, string Host, int Port, IReadOnlyList<NodeAssignment> Nodes)
{
    /// <summary>Unique per serve process, so two local pools on one machine never merge.</summary>
    public string ClusterId { get; init; } = $"serve-{Environment.ProcessId}";

    /// <summary>Internal ports: the gateway's silo (the pool's primary) and each node's silo and gRPC ports.</summary>
    public required LocalPoolPorts Ports { get; init; }

    /// <summary>Tight membership probing for the children (tests only).</summary>
    public bool FastFailureDetection { get; init; }

    /// <summary>The address clients use; a wildcard bind is still reached through loopback on this machine.</summary>
    public Uri Url => new($"http://{ReachableHost}:{Port}/");

    public string ReachableHost => Host is "0.0.0.0" or "*" or "+" ? "127.0.0.1" : Host is "::" or "[::]" ? "[::1]" : Host;
}

/// <summary>Loopback ports picked for the pool's internal traffic, which never leaves this machine.</summary>
public sealed record LocalPoolPorts(int GatewaySilo, IReadOnlyList<(int Grpc, int Silo)> Nodes)
{
    public static LocalPoolPorts Allocate(int nodeCount)
    {
        // Hold every socket until all are picked so no port is handed out twice.
        var sockets = new List<Socket>();
        try
        {
            int Next()
            {
                var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                sockets.Add(socket);
                socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                return ((IPEndPoint)socket.LocalEndPoint!).Port;
            }
            var gatewaySilo = Next();
            var nodes = new List<(int, int)>(nodeCount);
            for (var i = 0; i < nodeCount; i++) nodes.Add((Next(), Next()));
            return new LocalPoolPorts(gatewaySilo, nodes);
        }
        finally
        {
            foreach (var socket in sockets) socket.Dispose();
        }
    }
}

/// <summary>Builds the `potluck gateway` and `potluck node` command lines of a local pool.</summary>
public static class LocalPoolCommands
{
    public static ChildProcessSpec Gateway(LocalPoolPlan plan, int parentPid, bool verbose) =>
        Child("gateway", verbose,
        [
            "gateway", "--model", plan.ModelPath, "--listen", plan.Host, "--port", plan.Port.ToString(),
            "--silo-port", plan.Ports.GatewaySilo.ToString(), "--cluster-id", plan.ClusterId,
            // serve's nodes hold certificates from its own CA directory; the pool endpoint is for machines joining later.
            "--pool-port", "0",
        ], plan, parentPid);

    public static ChildProcessSpec Node(LocalPoolPlan plan, NodeAssignment node, int index, int parentPid, bool verbose) =>
        Child(node.Name, verbose,
        [
            "node", "--model", plan.ModelPath, "--layers", node.Layers, "--node-id", node.Name,
            "--advertise", "127.0.0.1", "--port", plan.Ports.Nodes[index].Grpc.ToString(), "--silo-port", plan.Ports.Nodes[index].Silo.ToString(),
            "--join", $"127.0.0.1:{plan.Ports.GatewaySilo}", "--cluster-id", plan.ClusterId,
            // Nodes share the machine's cores; without this each would start one thread per core.
            "--threads", Math.Max(1, Environment.ProcessorCount / Math.Max(1, plan.Nodes.Count)).ToString(),
        ], plan, parentPid);

    private static ChildProcessSpec Child(string name, bool verbose, List<string> arguments, LocalPoolPlan plan, int parentPid)
    {
        arguments.Add("--parent-pid");
        arguments.Add(parentPid.ToString());
        if (plan.FastFailureDetection) arguments.Add("--fast-failure-detection");
        if (verbose) arguments.Add("--verbose");
        var spec = SelfLauncher.Spec(name, arguments) with { OwnSession = true };
        // Keep the interleaved output readable: framework chatter only at warning level unless --verbose.
        return verbose ? spec : spec with { Environment = QuietFrameworkLogs };
    }

    private static readonly Dictionary<string, string> QuietFrameworkLogs = new()
    {
        ["Logging__LogLevel__Default"] = "Information",
        ["Logging__LogLevel__Microsoft"] = "Warning",
        ["Logging__LogLevel__Orleans"] = "Warning",
        ["Logging__LogLevel__Polly"] = "Warning",
        ["Logging__LogLevel__Grpc"] = "Warning",
        ["Logging__Console__FormatterName"] = "simple",
        ["Logging__Console__FormatterOptions__SingleLine"] = "true",
    };

    /// <summary>Fails fast, before any child starts, when the gateway's port is taken.</summary>
    public static void EnsurePortFree(string host, int port)
    {
        var address = host switch
        {
            "0.0.0.0" or "*" or "+" => IPAddress.Any,
            "::" or "[::]" => IPAddress.IPv6Any,
            "localhost" => IPAddress.Loopback,
            _ => IPAddress.TryParse(host.Trim('[', ']'), out var parsed) ? parsed : null,
        };
        if (address is null) return; // A host name: let the gateway resolve and bind it.
        try
        {
            using var probe = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            probe.Bind(new IPEndPoint(address, port));
        }
        catch (SocketException error) when (error.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            throw new CliFailureException($"port {port} on {host} is already in use; choose another with --port");
        }
        catch (SocketException error) when (error.SocketErrorCode == SocketError.AddressNotAvailable)
        {
            throw new CliFailureException($"cannot listen on {host}: no such local address");
        }
    }
}
