using System.Net;
using System.Security.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Potluck.Hosting;
using Potluck.Node.Compute;
using Potluck.Node.Hops;
using Potluck.Node.Telemetry;
using Potluck.Protocol;

namespace Potluck.Node.Hosting;

/// <summary>
/// Wiring shared by the node host and the hop benchmark: Kestrel HTTPS + HTTP/2 with mutual TLS on the pool CA, the
/// Stage service, and the member channel cache its next-stage links dial with.
/// </summary>
internal static partial class StageHosting
{
    /// <summary>One step's largest payload (F32) plus protobuf framing slack; anything bigger is ResourceExhausted.</summary>
    public static int MaxMessageBytes(int maxRowsPerStep, int width) =>
        (int)Math.Min(int.MaxValue, (long)maxRowsPerStep * width * sizeof(float) + 64 * 1024);

    /// <summary>
    /// Serves the Stage service on <paramref name="grpcPort"/>: TLS with this member's current certificate (read per
    /// handshake, so a renewal takes effect for new connections), and only peers whose client certificate
    /// <see cref="Potluck.Security.PoolTrust.ValidateMember"/> trusts get past the handshake.
    /// </summary>
    public static void AddStage(WebApplicationBuilder builder, IPAddress listen, int grpcPort, int maxMessageBytes, MemberSecurity security) =>
        AddStageCore(builder, listen, grpcPort, maxMessageBytes, security);

    /// <summary>The hop benchmark's baseline: the same stage over plaintext h2c. Never used by a node.</summary>
    internal static void AddPlaintextStageForBenchmark(WebApplicationBuilder builder, IPAddress listen, int grpcPort, int maxMessageBytes) =>
        AddStageCore(builder, listen, grpcPort, maxMessageBytes, null);

    private static void AddStageCore(WebApplicationBuilder builder, IPAddress listen, int grpcPort, int maxMessageBytes, MemberSecurity? security)
    {
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(listen, grpcPort, o =>
            {
                o.Protocols = HttpProtocols.Http2;
                if (security is not null) o.UseHttps(MutualTls(security, kestrel.ApplicationServices.GetRequiredService<ILoggerFactory>().CreateLogger("Potluck.Node.Tls")));
            });
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
        builder.Services.AddSingleton(sp => security is null
            ? MemberChannels.PlaintextForBenchmark(maxMessageBytes)
            : new MemberChannels(security.Credential, security.Trust, maxMessageBytes, log: sp.GetRequiredService<ILoggerFactory>().CreateLogger<MemberChannels>()));
        builder.Services.AddSingleton(sp => new NodeTelemetry(sp.GetService<System.Diagnostics.Metrics.IMeterFactory>()));
    }

    /// <summary>The data plane's server side of mutual TLS: pool members only, the pool CA as the only root.</summary>
    public static HttpsConnectionAdapterOptions MutualTls(MemberSecurity security, ILogger log) => new()
    {
        ServerCertificateSelector = (_, _) => security.Credential.Current.Certificate,
        ClientCertificateMode = ClientCertificateMode.RequireCertificate,
        // System roots, host names and chain errors of the platform do not matter: the pool trust decides alone.
        ClientCertificateValidation = (certificate, _, _) =>
        {
            var result = security.Trust.ValidateMember(certificate);
            if (!result.Trusted) LogRefused(log, certificate.Subject, result.Reason ?? "untrusted");
            return result.Trusted;
        },
        CheckCertificateRevocation = false,
        SslProtocols = SslProtocols.Tls13 | SslProtocols.Tls12,
        HandshakeTimeout = TimeSpan.FromSeconds(10),
    };

    public static void MapStage(WebApplication app) => app.MapGrpcService<StageService>();

    [LoggerMessage(EventId = 1, Level = LogLevel.Warning, Message = "Refused a data-plane connection with certificate {Subject}: {Reason}")]
    private static partial void LogRefused(ILogger log, string subject, string reason);
}
