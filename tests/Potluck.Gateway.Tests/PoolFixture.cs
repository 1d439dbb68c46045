using Microsoft.Extensions.Logging;
using Potluck.Protocol.V1;
using Potluck.Gateway;
using Potluck.Inference.Gguf;

namespace Potluck.Gateway.Tests;

/// <summary>
/// A pool as users run it: three node processes holding layers [0,1), [1,3), [3,4) of the small test model,
/// and an in-process gateway (F32 wire, so its output is bit-identical to llama.cpp on one node).
/// </summary>
public sealed class PoolFixture : IAsyncLifetime
{
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);

    public string ModelPath { get; } = TestModels.Small(GgmlType.Q8_0);
    public List<NodeProcess> Nodes { get; } = [];
    public GatewayApp Gateway { get; private set; } = null!;
    public HttpClient Http { get; private set; } = null!;
    public string ModelName { get; private set; } = "";
    public string Seed => $"127.0.0.1:{Nodes[0].SiloPort}";

    public async Task InitializeAsync()
    {
        var spans = new[] { (0, 1), (1, 3), (3, 4) };
        var primarySilo = Ports.Free();
        string? seed = null;
        for (var i = 0; i < spans.Length; i++)
        {
            Nodes.Add(NodeProcess.Start(ModelPath, spans[i].Item1, spans[i].Item2, $"node-{i}", seed, i == 0 ? primarySilo : null));
            seed ??= $"127.0.0.1:{primarySilo}";
        }
        Gateway = await StartGatewayAsync(seed!, HiddenType.F32);
        Http = new HttpClient { BaseAddress = Gateway.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        ModelName = Gateway.Services.GetService(typeof(Head.ModelFrontEnd)) is Head.ModelFrontEnd m ? m.Name : "";
        await WaitReadyAsync(Http, StartTimeout, () => string.Join("\n", Nodes.Select(n => $"--- {n.NodeId}\n{n.Output}")));
    }

    public async Task<GatewayApp> StartGatewayAsync(string? seed, HiddenType wire, Func<GatewayOptions, GatewayOptions>? configure = null)
    {
        var options = new GatewayOptions
        {
            Security = TestPki.Settings(),
            ModelPath = ModelPath,
            Port = 0,
            SiloPort = Ports.Free(),
            PrimarySiloEndpoint = seed,
            WireType = wire,
            Threads = 1,
            MaxBodyBytes = 64 * 1024,
            PoolRefreshPeriod = TimeSpan.FromMilliseconds(500),
            GatewayId = $"gateway-{Guid.NewGuid():N}"[..20],
            StepTimeout = TimeSpan.FromSeconds(30),
        };
        var app = GatewayHost.Build(configure?.Invoke(options) ?? options, logging => logging.SetMinimumLevel(LogLevel.Warning));
        using var timeout = new CancellationTokenSource(StartTimeout);
        await app.StartAsync(timeout.Token);
        return app;
    }

    public static async Task WaitReadyAsync(HttpClient http, TimeSpan timeout, Func<string>? diagnostics = null)
    {
        var deadline = DateTime.UtcNow + timeout;
        var last = "";
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                using var response = await http.GetAsync("readyz");
                last = await response.Content.ReadAsStringAsync();
                if (response.IsSuccessStatusCode) return;
            }
            catch (HttpRequestException e)
            {
                last = e.Message;
            }
            await Task.Delay(250);
        }
        throw new TimeoutException($"the pool was not ready within {timeout}: {last}\n{diagnostics?.Invoke()}");
    }

    public async Task DisposeAsync()
    {
        Http?.Dispose();
        if (Gateway is not null) await Gateway.DisposeAsync();
        foreach (var node in Nodes) await node.DisposeAsync();
    }
}

[CollectionDefinition(Name)]
public sealed class PoolCollection : ICollectionFixture<PoolFixture>
{
    public const string Name = "pool";
}
