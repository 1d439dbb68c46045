using Microsoft.Extensions.Logging;
using Potluck.Inference.Gguf;
using Potluck.Protocol.V1;

namespace Potluck.Gateway.Tests.Access;

/// <summary>A real in-process gateway (Kestrel and an Orleans silo on loopback, no nodes) with access options of a test's choosing.</summary>
public abstract class AccessGateway : IAsyncLifetime
{
    public GatewayApp Gateway { get; private set; } = null!;
    public Uri BaseAddress => Gateway.BaseAddress;
    public string ModelName { get; private set; } = "";
    protected string Directory { get; } = System.IO.Directory.CreateTempSubdirectory("potluck-access-gw-").FullName;

    /// <summary>The access part of the options.</summary>
    protected abstract GatewayOptions Configure(GatewayOptions options);

    public async Task InitializeAsync()
    {
        var options = Configure(new GatewayOptions
        {
            ModelPath = TestModels.Small(GgmlType.Q8_0),
            Port = 0,
            SiloPort = Ports.Free(),
            Threads = 1,
            WireType = HiddenType.F16,
            GatewayId = $"access-{Guid.NewGuid():N}"[..20],
            PoolRefreshPeriod = TimeSpan.FromMilliseconds(500),
        });
        Gateway = GatewayHost.Build(options, logging => logging.SetMinimumLevel(LogLevel.Warning));
        using var start = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        await Gateway.StartAsync(start.Token);
        ModelName = ((Head.ModelFrontEnd)Gateway.Services.GetService(typeof(Head.ModelFrontEnd))!).Name;
    }

    /// <summary>A client with no credentials; <paramref name="handler"/> for cookies or certificates.</summary>
    public virtual HttpClient Client(HttpMessageHandler? handler = null) =>
        new(handler ?? new SocketsHttpHandler(), disposeHandler: true) { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(30) };

    public async Task DisposeAsync()
    {
        if (Gateway is not null) await Gateway.DisposeAsync();
        System.IO.Directory.Delete(Directory, recursive: true);
    }
}
