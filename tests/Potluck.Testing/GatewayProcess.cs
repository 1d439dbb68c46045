using Xunit.Abstractions;

namespace Potluck.Testing;

/// <summary>
/// A real `potluck gateway` process on free loopback ports: its HTTP base address and its silo (the seed nodes
/// join through). Disposing sends SIGTERM, then kills it after <see cref="PotluckProcess.StopGrace"/>.
/// </summary>
public sealed class GatewayProcess : ChildProcess
{
    private GatewayProcess(string potluckHome, string modelPath, int port, int siloPort, IEnumerable<string> extraArguments, ITestOutputHelper? output)
        : base(PotluckProcess.StartInfo(["gateway", "--model", modelPath, "--port", $"{port}", "--silo-port", $"{siloPort}", .. extraArguments], potluckHome),
            "potluck gateway", output)
    {
        Port = port;
        SiloPort = siloPort;
        StopGrace = PotluckProcess.StopGrace;
    }

    public int Port { get; }
    public int SiloPort { get; }

    /// <summary>http://127.0.0.1:port, what `potluck node --join` and clients are given.</summary>
    public string Url => $"http://127.0.0.1:{Port}";

    /// <summary>The gateway's silo endpoint (host:port), what `potluck node --join` also takes.</summary>
    public string Seed => $"127.0.0.1:{SiloPort}";

    /// <param name="extraArguments">More `potluck gateway` flags, e.g. ["--join", seed].</param>
    public static GatewayProcess Start(string potluckHome, string modelPath, IEnumerable<string>? extraArguments = null,
        ITestOutputHelper? output = null) =>
        new(potluckHome, modelPath, Ports.Free(), Ports.Free(), extraArguments ?? [], output);

    /// <summary>An HTTP client on <see cref="Url"/>.</summary>
    public HttpClient CreateClient(TimeSpan? timeout = null) =>
        new() { BaseAddress = new Uri(Url), Timeout = timeout ?? TimeSpan.FromSeconds(30) };
}
