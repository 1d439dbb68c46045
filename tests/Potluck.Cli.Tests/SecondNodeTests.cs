using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Potluck.Cli.Tests;

/// <summary>
/// The README's node command started twice on one machine, sharing one $POTLUCK_HOME: both nodes serve, under their
/// own ids and ports, and a third that insists on a port the first holds is refused with one line naming the flag,
/// before it reaches membership, while the first keeps serving. Real `potluck gateway` and `potluck node` processes.
/// </summary>
[ProcessTest]
public sealed partial class SecondNodeTests(JoinModels models, ITestOutputHelper output) : IClassFixture<JoinModels>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task The_readme_node_command_twice_gives_two_serving_nodes_and_a_taken_port_harms_nobody()
    {
        var home = models.Home.Path;
        await using var gateway = GatewayProcess.Start(home, models.Pool);
        using var http = gateway.CreateClient(TimeSpan.FromSeconds(10));
        await JoinTests.WaitUntilAsync(http, "healthz", _ => true, Limit, gateway);

        // The README's command (its --token is only needed where the pool's CA is elsewhere; here it is in this POTLUCK_HOME).
        string[] readme = ["node", "--model", models.Pool, "--join", gateway.Url, "--threads", "1"];
        await using var first = PotluckProcess.Start(home, readme);
        await JoinTests.WaitUntilAsync(http, "readyz", body => ServingNodes(body) == 1, Limit, first);
        await using var second = PotluckProcess.Start(home, readme);
        await JoinTests.WaitUntilAsync(http, "readyz", body => ServingNodes(body) == 2, Limit, second);

        var nodes = await NodesAsync(http);
        output.WriteLine(string.Join("\n", nodes.Select(n => $"{n.Id} {n.Endpoint} {n.State}")));
        Assert.Equal(2, nodes.Count);
        Assert.NotEqual(nodes[0].Id, nodes[1].Id);
        Assert.NotEqual(nodes[0].Endpoint, nodes[1].Endpoint);
        // Ids are this machine's name and a number, not an address and a port.
        var prefix = Potluck.Node.Hosting.NodeIdClaim.BaseName(Environment.MachineName) + "-";
        Assert.All(nodes, n => Assert.StartsWith(prefix, n.Id, StringComparison.Ordinal));
        Assert.All(nodes, n => Assert.Equal("healthy", n.State));

        // A third insists on the first node's silo port, then on its gRPC port: one line each, naming the flag, and
        // nothing joined (the line comes before "joining the pool").
        var siloPort = SiloPort().Match(first.Output) is { Success: true } silo ? silo.Groups[1].Value
            : throw new InvalidOperationException($"no silo port in the first node's output\n{first.Output}");
        var grpcPort = new Uri(nodes.Single(n => first.Output.Contains($"{n.Id} serving", StringComparison.Ordinal)).Endpoint).Port.ToString();
        foreach (var (flag, port) in new[] { ("--silo-port", siloPort), ("--port", grpcPort) })
        {
            var refused = await PotluckProcess.RunAsync(home, Limit, [.. readme, flag, port]);
            output.WriteLine($"{flag} {port}: exit {refused.ExitCode}: {refused.Stderr.Trim()}");
            Assert.True(refused.ExitCode == 1, refused.ToString());
            TextAssert.OneLineError(refused, $"port {port}");
            TextAssert.OneLineError(refused, $"another {flag} ");
            Assert.DoesNotContain("joining the pool", refused.Stdout, StringComparison.Ordinal);
        }

        // Membership would have evicted the first by now (probes every few seconds); it is still a member and serving.
        await Task.Delay(TimeSpan.FromSeconds(8));
        Assert.False(first.HasExited, first.Output);
        Assert.False(second.HasExited, second.Output);
        Assert.DoesNotContain("I am dead", first.Output, StringComparison.Ordinal);
        using var ready = await http.GetAsync("readyz");
        var body = await ready.Content.ReadAsStringAsync();
        Assert.True(ready.IsSuccessStatusCode && ServingNodes(body) == 2, body);
    }

    internal static int ServingNodes(string readyz)
    {
        using var json = JsonDocument.Parse(readyz);
        return json.RootElement.TryGetProperty("serving_nodes", out var count) ? count.GetInt32() : 0;
    }

    private static async Task<List<(string Id, string Endpoint, string State)>> NodesAsync(HttpClient http)
    {
        using var pool = JsonDocument.Parse(await http.GetStringAsync("api/pool"));
        return pool.RootElement.GetProperty("nodes").EnumerateArray()
            .Select(n => (n.GetProperty("id").GetString()!, n.GetProperty("endpoint").GetString()!, n.GetProperty("state").GetString()!)).ToList();
    }

    // The node's start line: "... gRPC https://127.0.0.1:PORT; silo 127.0.0.1:PORT; ...".
    [GeneratedRegex(@"; silo [0-9.]+:(\d+);")]
    private static partial Regex SiloPort();
}
