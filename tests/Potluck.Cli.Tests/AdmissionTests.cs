using System.Net;
using System.Net.Security;
using System.Text;
using System.Text.Json;
using Potluck.Security;

namespace Potluck.Cli.Tests;

/// <summary>
/// Admission with invite tokens, against real `potluck gateway` and `potluck node` processes on loopback. Joining
/// nodes get a POTLUCK_HOME of their own: in the gateway's home a node would issue itself a certificate from the
/// gateway's CA directory (the local-machine path, which the "keeper" nodes use).
/// </summary>
[ProcessTest]
public sealed class AdmissionTests : IClassFixture<JoinModels>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(120);
    private readonly JoinModels _models;

    public AdmissionTests(JoinModels models) => _models = models;

    [Fact]
    public async Task OnlyAValidTokenAdmitsANodeAndARevokedNodeIsDroppedWhileThePoolKeepsServing()
    {
        using var gatewayHome = new TempHome();
        await using var gateway = GatewayProcess.Start(gatewayHome.Path, _models.Pool, ["--fast-failure-detection"]);
        using var http = gateway.CreateMemberClient();
        await JoinTests.WaitUntilAsync(http, "healthz", _ => true, Limit, gateway);

        // The public document names the model and the pool endpoint, and nothing a rogue silo could use.
        var published = await http.GetStringAsync("api/join");
        using (var json = JsonDocument.Parse(published))
        {
            Assert.Equal(2, json.RootElement.GetProperty("version").GetInt32());
            Assert.Equal($"https://127.0.0.1:{gateway.PoolPort}/", json.RootElement.GetProperty("pool_url").GetString());
            Assert.False(json.RootElement.TryGetProperty("cluster_id", out _));
            Assert.False(json.RootElement.TryGetProperty("membership", out _));
            Assert.False(json.RootElement.TryGetProperty("spans", out _));
        }
        Assert.DoesNotContain(gateway.SiloPort.ToString(), published);
        using (var plain = new HttpClient(new SocketsHttpHandler { SslOptions = new SslClientAuthenticationOptions { RemoteCertificateValidationCallback = (_, _, _, _) => true } }))
        using (var anonymous = await plain.GetAsync($"{gateway.PoolUrl}/api/pool/join"))
            Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);

        // A node on the CA holder's machine needs no token.
        await using var keeper = StartNode(gatewayHome.Path, gateway, "keeper");
        await JoinTests.WaitUntilAsync(http, "readyz", body => body.Contains("keeper [0, 8)", StringComparison.Ordinal), Limit, keeper);

        using var joinerHome = new TempHome();
        var noToken = await RunNodeAsync(joinerHome.Path, gateway, "joiner");
        Assert.True(noToken.ExitCode == 4, noToken.ToString());
        TextAssert.OneLineError(noToken, "holds no certificate of pool potluck");

        var expired = await InviteAsync(gatewayHome.Path, "--ttl", "1s");
        await Task.Delay(TimeSpan.FromSeconds(2));
        var late = await RunNodeAsync(joinerHome.Path, gateway, "joiner", "--token", expired);
        Assert.True(late.ExitCode == 4, late.ToString());
        TextAssert.OneLineError(late, "the join token has expired");

        using var otherHome = new TempHome();
        var foreign = await InviteAsync(otherHome.Path);
        var wrongCa = await RunNodeAsync(joinerHome.Path, gateway, "joiner", "--token", foreign);
        Assert.True(wrongCa.ExitCode == 4, wrongCa.ToString());
        TextAssert.OneLineError(wrongCa, "is not the one the token names");
        Assert.False(Directory.Exists(Path.Combine(joinerHome.Path, "identity")), "nothing was enrolled");

        // A valid token: enrolled (key made here, certificate saved), then joined; the chat runs through it alone.
        var token = await InviteAsync(gatewayHome.Path, "--uses", "1");
        await using var joiner = StartNode(joinerHome.Path, gateway, "joiner", "--token", token);
        await JoinTests.WaitUntilAsync(http, "api/pool/join", body => HealthySpan(body, "joiner"), Limit, joiner);
        Assert.Contains("enrolled as potluck://potluck/member/joiner", joiner.Output);
        Assert.True(MemberCredential.Exists(Path.Combine(joinerHome.Path, "identity", "potluck", "joiner")));
        await keeper.StopAsync(PotluckProcess.StopGrace);
        await JoinTests.WaitUntilAsync(http, "readyz", body => body.Contains("\"route\":\"joiner [0, 8)\"", StringComparison.Ordinal), Limit, joiner);
        await ChatAsync(http);

        // The token is spent.
        using var secondHome = new TempHome();
        var reused = await RunNodeAsync(secondHome.Path, gateway, "second", "--token", token);
        Assert.True(reused.ExitCode == 4, reused.ToString());
        TextAssert.OneLineError(reused, "the join token has been used up");

        // Renewal: the same identity, a fresh certificate, over mutual TLS with the current one.
        using (var held = MemberCredential.Load(Path.Combine(joinerHome.Path, "identity", "potluck", "joiner")))
        {
            using var renewed = await Node.Joining.PoolJoinClient.RenewAsync(new Uri(gateway.PoolUrl + "/"), held, TimeSpan.FromSeconds(30), CancellationToken.None);
            Assert.Equal(held.Identity, renewed.Identity);
            Assert.NotEqual(held.Certificate.SerialNumber, renewed.Certificate.SerialNumber);
            Assert.True(renewed.NotAfter >= held.NotAfter);
        }

        await using var spare = StartNode(gatewayHome.Path, gateway, "spare");
        await JoinTests.WaitUntilAsync(http, "api/pool/join", body => HealthySpan(body, "spare"), Limit, spare);

        // Revoked: the node is marked dead and stops, leaves the pool view and routing; the pool serves on through spare.
        var revoke = await PotluckProcess.RunAsync(gatewayHome.Path, Limit, "pool", "revoke", "joiner");
        Assert.True(revoke.ExitCode == 0, revoke.ToString());
        // It stops either way: Orleans' membership declares it dead (the silo kills itself), or it reads its own
        // revocation from the pool directory first and shuts down.
        await joiner.WaitForExitAsync(Limit);
        Assert.True(joiner.HasExited);
        using (var pool = JsonDocument.Parse(await http.GetStringAsync("api/pool")))
            Assert.DoesNotContain(pool.RootElement.GetProperty("nodes").EnumerateArray(), n => n.GetProperty("id").GetString() == "joiner");
        await JoinTests.WaitUntilAsync(http, "readyz", body => body.Contains("\"route\":\"spare [0, 8)\"", StringComparison.Ordinal), Limit, spare);
        await ChatAsync(http);
        Assert.Contains("revoked nodes: joiner", (await PotluckProcess.RunAsync(gatewayHome.Path, Limit, "pool", "list")).Stdout);

        // Its certificate is still within its lifetime, but the pool refuses it, and it cannot rejoin.
        using (var revokedCredential = MemberCredential.Load(Path.Combine(joinerHome.Path, "identity", "potluck", "joiner")))
        using (var asRevoked = new HttpClient(new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions { ClientCertificates = [revokedCredential.Certificate], RemoteCertificateValidationCallback = (_, _, _, _) => true },
        }))
        using (var refused = await asRevoked.GetAsync($"{gateway.PoolUrl}/api/pool/join"))
        {
            Assert.Equal(HttpStatusCode.Forbidden, refused.StatusCode);
            Assert.Contains("revoked", await refused.Content.ReadAsStringAsync());
        }
        var rejoin = await RunNodeAsync(joinerHome.Path, gateway, "joiner");
        Assert.True(rejoin.ExitCode == 4, rejoin.ToString());
        TextAssert.OneLineError(rejoin, "revoked");
    }

    private ChildProcess StartNode(string home, GatewayProcess gateway, string id, params string[] more)
    {
        string[] arguments = ["node", "--model", _models.Pool, "--join", gateway.Url, "--layers", "0-8", "--node-id", id,
            "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(), "--threads", "1", "--fast-failure-detection", .. more];
        return PotluckProcess.Start(home, arguments);
    }

    private Task<PotluckRun> RunNodeAsync(string home, GatewayProcess gateway, string id, params string[] more) =>
        PotluckProcess.RunAsync(home, Limit, ["node", "--model", _models.Pool, "--join", gateway.Url, "--layers", "0-8", "--node-id", id,
            "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(), "--threads", "1", .. more]);

    /// <summary>`potluck pool invite` in <paramref name="home"/> (its CA is created first when there is none); the token from stdout.</summary>
    private static async Task<string> InviteAsync(string home, params string[] more)
    {
        var init = await PotluckProcess.RunAsync(home, Limit, "pool", "init");
        Assert.True(init.ExitCode == 0, init.ToString());
        var invite = await PotluckProcess.RunAsync(home, Limit, ["pool", "invite", .. more]);
        Assert.True(invite.ExitCode == 0, invite.ToString());
        var token = invite.Stdout.Trim();
        Assert.StartsWith(JoinToken.Prefix, token);
        Assert.Contains("--token", invite.Stderr);
        return token;
    }

    private static bool HealthySpan(string membersDocument, string nodeId) =>
        Cluster.Joining.PoolJoinInfo.Parse(membersDocument).Spans.Any(s => s.NodeId == nodeId && s.Healthy && !s.Joining);

    private static async Task ChatAsync(HttpClient http)
    {
        var name = JsonDocument.Parse(await http.GetStringAsync("api/join")).RootElement.GetProperty("model").GetProperty("name").GetString();
        var request = JsonSerializer.Serialize(new { model = name, messages = new[] { new { role = "user", content = "Hello" } }, max_tokens = 3, temperature = 0, ignore_eos = true });
        using var content = new StringContent(request, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync("v1/chat/completions", content);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, body);
        using var json = JsonDocument.Parse(body);
        Assert.Equal(3, json.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }
}
