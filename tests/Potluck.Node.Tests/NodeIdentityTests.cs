using System.Net;
using System.Net.Sockets;
using Potluck.Cluster;
using Potluck.Hosting;
using Potluck.Node.Hosting;

namespace Potluck.Node.Tests;

/// <summary>The defaults that keep a second node on one machine from colliding with the first: ids, ports, notation.</summary>
public sealed class NodeIdentityTests : IDisposable
{
    private readonly string _locks = Path.Combine(Path.GetTempPath(), $"potluck-idlocks-{Guid.NewGuid():N}");

    public void Dispose()
    {
        // The claims of this process stay held until it exits; the files may stay too.
        try { Directory.Delete(_locks, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    [Fact]
    public void Two_claims_on_one_machine_get_two_ids_named_after_the_host()
    {
        var security = new PoolSecuritySettings(IdentityDirectory: null);
        var first = NodeIdClaim.Claim(security, "claim-test", _locks, "Lab Box #7");
        var second = NodeIdClaim.Claim(security, "claim-test", _locks, "Lab Box #7");
        Assert.Equal("lab-box--7-1", first);
        Assert.Equal("lab-box--7-2", second);
        Assert.True(NodeIdClaim.IsHeld(first, _locks));
        Assert.False(NodeIdClaim.IsHeld("lab-box--7-3", _locks));
    }

    [Fact]
    public void A_lock_left_by_a_process_that_ended_is_free_again()
    {
        // A lock file nobody holds (its process is gone): the next node takes that id, so a restart keeps its name.
        Directory.CreateDirectory(_locks);
        File.WriteAllText(Path.Combine(_locks, "restart-1.lock"), "12345\n");
        Assert.Equal("restart-1", NodeIdClaim.Claim(new PoolSecuritySettings(), "claim-test", _locks, "restart"));
    }

    [Theory]
    [InlineData("vm", "vm")]
    [InlineData("-weird_host.local", "weird_host.local")]
    [InlineData("", "node")]
    public void Host_names_become_valid_id_prefixes(string host, string expected) => Assert.Equal(expected, NodeIdClaim.BaseName(host));

    [Fact]
    public void Ports_default_to_free_ones_and_a_taken_fixed_port_names_its_flag()
    {
        var settled = NodePorts.Settle(Options(0, 0), IPAddress.Loopback);
        Assert.NotEqual(0, settled.GrpcPort);
        Assert.NotEqual(0, settled.SiloPort);
        Assert.NotEqual(settled.GrpcPort, settled.SiloPort);

        using var holder = new TcpListener(IPAddress.Loopback, 0);
        holder.Start();
        var taken = ((IPEndPoint)holder.LocalEndpoint).Port;
        var grpc = Assert.Throws<PortTakenException>(() => NodePorts.Settle(Options(taken, 0), IPAddress.Loopback));
        Assert.Contains($"port {taken}", grpc.Message);
        Assert.Contains("--port (Potluck__Node__GrpcPort)", grpc.Message);
        var silo = Assert.Throws<PortTakenException>(() => NodePorts.Settle(Options(0, taken), IPAddress.Loopback));
        Assert.Contains("--silo-port (Potluck__Node__SiloPort)", silo.Message);
    }

    [Fact]
    public void A_taken_port_is_found_even_when_its_holder_allows_port_reuse()
    {
        // Orleans binds with SO_REUSEADDR (SO_REUSEPORT on Linux): a probe that allowed reuse would bind beside it.
        using var holder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        holder.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        holder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        holder.Listen();
        var taken = ((IPEndPoint)holder.LocalEndPoint!).Port;
        Assert.Throws<PortTakenException>(() => NodePorts.Settle(Options(0, taken), IPAddress.Loopback));
    }

    [Theory]
    [InlineData("4:8", 4, 8, false)]
    [InlineData("0:1", 0, 1, false)]
    [InlineData("4-8", 4, 8, true)]
    public void Layers_are_typed_as_a_colon_range_and_the_dash_is_the_old_form(string text, int start, int end, bool legacy)
    {
        Assert.True(LayerRange.TryParse(text, out var s, out var e, out var old));
        Assert.Equal((start, end, legacy), (s, e, old));
        Assert.Equal($"[{start}, {end})", LayerRange.Format(start, end));
        // What a message prints as a hint parses back to the same layers.
        Assert.True(LayerRange.TryParse(LayerRange.Input(start, end), out s, out e, out old));
        Assert.Equal((start, end, false), (s, e, old));
    }

    [Theory]
    [InlineData("8:4")]
    [InlineData("4:4")]
    [InlineData("-1:4")]
    [InlineData(" 4:8")]
    [InlineData("4:8)")]
    [InlineData("[4, 8)")]
    [InlineData("4")]
    [InlineData(":8")]
    public void Anything_else_is_no_layer_range(string text) => Assert.False(LayerRange.TryParse(text, out _, out _, out _));

    private static NodeOptions Options(int grpc, int silo) => new() { ModelPath = "m.gguf", LayerStart = 0, LayerEnd = 1, GrpcPort = grpc, SiloPort = silo };
}
