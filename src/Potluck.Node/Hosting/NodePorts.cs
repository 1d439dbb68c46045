using System.Net;
using System.Net.Sockets;

namespace Potluck.Node.Hosting;

/// <summary>
/// A node's ports. Outside a container they default to free ones (0 = "pick one at start"), so a second node on the
/// same machine never collides with the first; the chosen ports reach the pool through membership and the pool
/// directory. Containers keep the fixed 7100/11111 their network policies and probes name. A fixed port that is
/// taken is refused before the node loads or joins anything: a silo that joined on a taken port would first mark the
/// running node dead ("older version of myself") and only then fail.
/// </summary>
public static class NodePorts
{
    public const int ContainerGrpcPort = 7100;
    public const int ContainerSiloPort = 11111;

    /// <summary>7100 in a container, else 0 (a free port).</summary>
    public static int DefaultGrpcPort => InContainer ? ContainerGrpcPort : 0;

    /// <summary>11111 in a container, else 0 (a free port).</summary>
    public static int DefaultSiloPort => InContainer ? ContainerSiloPort : 0;

    /// <summary>
    /// The potluck image (on Microsoft's .NET base images) sets DOTNET_RUNNING_IN_CONTAINER. Not /.dockerenv: development
    /// containers and CI runners have it too, and there two nodes must not collide. Compose and Helm pass their ports
    /// explicitly anyway; this keeps a bare `docker run` of the image on the documented ports.
    /// </summary>
    public static bool InContainer { get; } =
        string.Equals(Environment.GetEnvironmentVariable("DOTNET_RUNNING_IN_CONTAINER"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Settles the ports: a 0 becomes a free port on <paramref name="listen"/>; a fixed port must be free there.
    /// </summary>
    /// <exception cref="PortTakenException">A fixed port is in use; the message names its flag and variable.</exception>
    public static NodeOptions Settle(NodeOptions options, IPAddress listen)
    {
        var grpc = options.GrpcPort == 0 ? Free(listen) : EnsureFree(listen, options.GrpcPort, "--port", "Potluck__Node__GrpcPort");
        var silo = options.SiloPort == 0 ? Free(listen, except: grpc) : EnsureFree(listen, options.SiloPort, "--silo-port", "Potluck__Node__SiloPort");
        if (grpc == silo) throw new PortTakenException($"--port and --silo-port are both {grpc}; give them different ports");
        if (options.GatewayPort != 0) EnsureFree(listen, options.GatewayPort, "Orleans gateway port", "Potluck__Node__GatewayPort");
        return options with { GrpcPort = grpc, SiloPort = silo };
    }

    private static int Free(IPAddress listen, int except = -1)
    {
        for (var attempt = 0; ; attempt++)
        {
            using var socket = new Socket(listen.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new IPEndPoint(listen, 0));
            var port = ((IPEndPoint)socket.LocalEndPoint!).Port;
            if (port != except || attempt > 8) return port;
        }
    }

    /// <summary>Whether something accepts connections on the port (through loopback when bound to every interface).</summary>
    private static bool Listening(IPAddress listen, int port)
    {
        var target = listen.Equals(IPAddress.Any) ? IPAddress.Loopback : listen.Equals(IPAddress.IPv6Any) ? IPAddress.IPv6Loopback : listen;
        try
        {
            using var client = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            client.ConnectAsync(new IPEndPoint(target, port), timeout.Token).AsTask().GetAwaiter().GetResult();
            return true;
        }
        catch (SocketException)
        {
            // Refused: nobody listens.
            return false;
        }
        catch (OperationCanceledException)
        {
            // No answer in time: something holds the port; refusing is the safe side.
            return true;
        }
    }

    private static int EnsureFree(IPAddress listen, int port, string flag, string variable)
    {
        try
        {
            // No ReuseAddress: on Linux .NET maps it to SO_REUSEPORT too, which binds beside a running silo, and so does
            // Orleans; that is how a second node on the same port used to join and evict the first.
            using var socket = new Socket(listen.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new IPEndPoint(listen, port));
            return port;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse && !Listening(listen, port))
        {
            // Only connections in TIME_WAIT from a node that just stopped: the servers' own binds succeed.
            return port;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.AddressAlreadyInUse or SocketError.AccessDenied)
        {
            var why = e.SocketErrorCode == SocketError.AccessDenied ? "may not be bound by this user" : "is already in use (another node?)";
            var free = InContainer ? "" : ", or leave it out and the node takes a free port";
            throw new PortTakenException($"port {port} on {listen} {why}; pass another {flag} ({variable}){free}");
        }
    }
}

/// <summary>A fixed port of this node is taken: nothing was started or joined (exit 1, one line).</summary>
public sealed class PortTakenException(string message) : Exception(message);
