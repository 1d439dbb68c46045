using System.Net;
using System.Net.Sockets;
using Potluck.Cli.Supervision;

namespace Potluck.Cli.Serve;

/// <summary>What `serve` starts: where the gateway listens and which node holds which layers.</summary>
public sealed record LocalPoolPlan(string ModelPath, string Host, int Port, IReadOnlyList<NodeAssignment> Nodes)
{
    /// <summary>The address clients use; a wildcard bind is still reached through loopback on this machine.</summary>
    public Uri Url => new($"http://{ReachableHost}:{Port}/");

    public string ReachableHost => Host is "0.0.0.0" or "*" or "+" ? "127.0.0.1" : Host is "::" or "[::]" ? "[::1]" : Host;
}

/// <summary>Builds the `potluck gateway` and `potluck node` command lines of a local pool.</summary>
public static class LocalPoolCommands
{
    public static ChildProcessSpec Gateway(LocalPoolPlan plan, int parentPid, bool verbose) =>
        SelfLauncher.Spec("gateway", WithCommon(
            ["gateway", "--model", plan.ModelPath, "--host", plan.Host, "--port", plan.Port.ToString()], parentPid, verbose));

    public static ChildProcessSpec Node(LocalPoolPlan plan, NodeAssignment node, int parentPid, bool verbose) =>
        SelfLauncher.Spec(node.Name, WithCommon(
            ["node", "--model", plan.ModelPath, "--layers", node.Layers, "--host", plan.Host, "--join", plan.Url.ToString()], parentPid, verbose));

    private static List<string> WithCommon(List<string> arguments, int parentPid, bool verbose)
    {
        arguments.Add("--parent-pid");
        arguments.Add(parentPid.ToString());
        if (verbose) arguments.Add("--verbose");
        return arguments;
    }

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
