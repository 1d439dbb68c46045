using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Potluck.Node.Compute;
using Potluck.Node.Hops;
using Potluck.Node.Telemetry;

namespace Potluck.Node.Hosting;

/// <summary>Wiring shared by the node host and the hop benchmark: Kestrel HTTP/2 + the Stage service.</summary>
internal static class StageHosting
{
    /// <summary>One step's largest payload (F32) plus protobuf framing slack; anything bigger is ResourceExhausted.</summary>
    public static int MaxMessageBytes(int maxRowsPerStep, int width) =>
        (int)Math.Min(int.MaxValue, (long)maxRowsPerStep * width * sizeof(float) + 64 * 1024);

    public static void AddStage(WebApplicationBuilder builder, IPAddress listen, int grpcPort, int maxMessageBytes)
    {
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(listen, grpcPort, o => o.Protocols = HttpProtocols.Http2);
            kestrel.Limits.Http2.MaxStreamsPerConnection = 1000;
            // Steps are small and frequent: don't hold frames back waiting for window updates.
            kestrel.Limits.Http2.InitialConnectionWindowSize = 16 * 1024 * 1024;
            kestrel.Limits.Http2.InitialStreamWindowSize = 8 * 1024 * 1024;
        });
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = maxMessageBytes;
            o.MaxSendMessageSize = maxMessageBytes;
            o.EnableDetailedErrors = false;
        });
        builder.Services.AddSingleton(_ => new StageChannels(maxMessageBytes));
        builder.Services.AddSingleton(sp => new NodeTelemetry(sp.GetService<System.Diagnostics.Metrics.IMeterFactory>()));
    }

    public static void MapStage(WebApplication app) => app.MapGrpcService<StageService>();
}
