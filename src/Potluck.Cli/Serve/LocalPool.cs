using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
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

    /// <summary>The gateway's access flags and keys (none: an open loopback API, as before).</summary>
    public LocalPoolAccess Access { get; init; } = LocalPoolAccess.None;

    /// <summary>The address clients use; a wildcard bind is still reached through loopback on this machine.</summary>
    public Uri Url => new($"{(Access.Https ? "https" : "http")}://{ReachableHost}:{Port}/");

    public string ReachableHost => Host is "0.0.0.0" or "*" or "+" ? "127.0.0.1" : Host is "::" or "[::]" ? "[::1]" : Host;
}

/// <summary>
/// What `serve` hands its gateway child for access control: flags that hold no secret on its command line, the keys in
/// its environment (so `ps` never shows them), and what serve itself needs to reach the API (a key, the certificate).
/// </summary>
public sealed record LocalPoolAccess(IReadOnlyList<string> GatewayArguments, IReadOnlyDictionary<string, string> GatewayEnvironment)
{
    public static LocalPoolAccess None { get; } = new([], new Dictionary<string, string>());

    /// <summary>A key serve uses for its own requests (the served model's name); null when the API is open.</summary>
    public string? ClientKey { get; init; }

    /// <summary>Clients need a key (API keys are configured).</summary>
    public bool KeysRequired { get; init; }

    /// <summary>The API's HTTPS certificate; serve's own requests trust exactly this one.</summary>
    public X509Certificate2? Certificate { get; init; }

    public bool Https => Certificate is not null;

    /// <summary>An HTTP client for serve's own requests to its gateway: the key, and the pinned certificate over HTTPS.</summary>
    public HttpClient CreateClient(TimeSpan timeout)
    {
        var handler = new SocketsHttpHandler();
        if (Certificate is { } pinned)
        {
            handler.SslOptions.RemoteCertificateValidationCallback = (_, presented, _, errors) =>
                errors == System.Net.Security.SslPolicyErrors.None || (presented is not null && presented.GetCertHashString() == pinned.GetCertHashString());
        }
        var http = new HttpClient(handler) { Timeout = timeout };
        if (ClientKey is not null) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ClientKey);
        return http;
    }
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
            // The pool's internal traffic stays on this machine, whatever address the API listens on.
            "--silo-listen", "127.0.0.1",
            "--silo-port", plan.Ports.GatewaySilo.ToString(), "--cluster-id", plan.ClusterId,
            .. plan.Access.GatewayArguments,
            // serve's nodes hold certificates from its own CA directory; the pool endpoint is for machines joining later.
            "--pool-port", "0",
        ], plan, parentPid, plan.Access.GatewayEnvironment);

    public static ChildProcessSpec Node(LocalPoolPlan plan, NodeAssignment node, int index, int parentPid, bool verbose) =>
        Child(node.Name, verbose,
        [
            "node", "--model", plan.ModelPath, "--layers", node.Layers, "--node-id", node.Name,
            "--advertise", "127.0.0.1", "--port", plan.Ports.Nodes[index].Grpc.ToString(), "--silo-port", plan.Ports.Nodes[index].Silo.ToString(),
            "--join", $"127.0.0.1:{plan.Ports.GatewaySilo}", "--cluster-id", plan.ClusterId,
            // Nodes share the machine's cores; without this each would start one thread per core.
            "--threads", Math.Max(1, Environment.ProcessorCount / Math.Max(1, plan.Nodes.Count)).ToString(),
            // ...and its memory: each node's default KV budget is its share of what is free.
            "--nodes-on-host", plan.Nodes.Count.ToString(),
        ], plan, parentPid);

    private static ChildProcessSpec Child(string name, bool verbose, List<string> arguments, LocalPoolPlan plan, int parentPid,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        arguments.Add("--parent-pid");
        arguments.Add(parentPid.ToString());
        if (plan.FastFailureDetection) arguments.Add("--fast-failure-detection");
        if (verbose) arguments.Add("--verbose");
        var spec = SelfLauncher.Spec(name, arguments) with { OwnSession = true };
        // The children's logs are quiet by default (Potluck.Hosting.PotluckLogging); --verbose is passed on above.
        var variables = new Dictionary<string, string>();
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) variables[key] = value;
        return variables.Count == 0 ? spec : spec with { Environment = variables };
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
