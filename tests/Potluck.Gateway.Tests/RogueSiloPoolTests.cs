using System.Net;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;
using Orleans.Hosting;
using Orleans.Runtime;
using Potluck.Security;
using Xunit.Abstractions;

namespace Potluck.Gateway.Tests;

/// <summary>
/// The rogue-silo attack: a process that reaches the pool's seed silo starts a silo with the pool's cluster id, once
/// without TLS and once with a member certificate from another CA. Neither ever becomes an active member, and the
/// pool keeps serving chats.
/// </summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class RogueSiloPoolTests(PoolFixture pool, ITestOutputHelper output)
{
    private static readonly TimeSpan JoinAttempt = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task A_silo_without_tls_cannot_join_the_pool_and_the_pool_keeps_serving()
    {
        await AttackAsync(rogueCertificate: null);
    }

    [Fact]
    public async Task A_silo_with_a_certificate_of_another_ca_cannot_join_the_pool_and_the_pool_keeps_serving()
    {
        var directory = Path.Combine(Path.GetTempPath(), $"potluck-rogue-ca-{Guid.NewGuid():N}");
        try
        {
            // The same pool id and a plausible member id: only the CA is not the pool's.
            using var rogueCa = PoolAuthority.Create(directory, TestPki.DefaultPool);
            using var rogue = rogueCa.IssueCredential(PoolIdentity.Create(TestPki.DefaultPool, PoolRole.Member, "node-9"));
            await AttackAsync(rogue.Certificate);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private async Task AttackAsync(X509Certificate2? rogueCertificate)
    {
        var siloPort = Ports.Free();
        var seed = pool.Nodes[0].SiloPort;
        using var rogue = new HostBuilder()
            .ConfigureLogging(logging => logging.SetMinimumLevel(LogLevel.Warning))
            .UseOrleans(silo =>
            {
                silo.UseDevelopmentClustering(new IPEndPoint(IPAddress.Loopback, seed));
                silo.Configure<ClusterOptions>(o => { o.ClusterId = TestPki.DefaultPool; o.ServiceId = "potluck"; });
                silo.ConfigureEndpoints(IPAddress.Loopback, siloPort, Ports.Free());
                if (rogueCertificate is not null)
                {
                    silo.UseTls(rogueCertificate, o =>
                    {
                        o.RemoteCertificateMode = Orleans.Connections.Security.RemoteCertificateMode.RequireCertificate;
                        o.ClientCertificateMode = Orleans.Connections.Security.RemoteCertificateMode.RequireCertificate;
                        // The rogue trusts anyone: only the pool's refusal keeps it out.
                        o.AllowAnyRemoteCertificate();
                    });
                }
            })
            .Build();

        using (var attempt = new CancellationTokenSource(JoinAttempt))
        {
            try
            {
                await rogue.StartAsync(attempt.Token);
                output.WriteLine("the rogue silo's start returned");
            }
            catch (Exception e)
            {
                output.WriteLine($"the rogue silo did not start: {e.GetType().Name}: {e.Message.Split('\n')[0]}");
            }
        }

        // Membership as the pool sees it: the rogue's address is never an active silo.
        var management = pool.Gateway.Services.GetRequiredService<IGrainFactory>().GetGrain<IManagementGrain>(0);
        var hosts = await management.GetHosts(onlyActive: false);
        foreach (var (address, status) in hosts) output.WriteLine($"{address} {status}");
        Assert.DoesNotContain(hosts, h => h.Key.Endpoint.Port == siloPort && h.Value == SiloStatus.Active);
        Assert.Equal(pool.Nodes.Count + 1, hosts.Count(h => h.Value == SiloStatus.Active));

        // The pool keeps serving.
        using var body = new StringContent(
            $$"""{"model":{{JsonSerializer.Serialize(pool.ModelName)}},"messages":[{"role":"user","content":"hi"}],"max_tokens":4}""",
            Encoding.UTF8, "application/json");
        using var response = await pool.Http.PostAsync("v1/chat/completions", body);
        Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync());

        try
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            await rogue.StopAsync(stop.Token);
        }
        catch (Exception e) when (e is OperationCanceledException or OrleansException or AggregateException or InvalidOperationException)
        {
            output.WriteLine($"stopping the rogue: {e.GetType().Name}");
        }
    }
}
