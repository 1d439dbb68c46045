using System.Collections.Concurrent;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Potluck.Protocol.V1;
using Potluck.Protocol;
using Potluck.Node.Compute;
using Potluck.Security;

namespace Potluck.Node.Tests;

/// <summary>Several real nodes (silo + gRPC) in this process, clustered over loopback.</summary>
public sealed class InProcessPool : IAsyncDisposable
{
    public static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(30);

    private InProcessPool(List<WebApplication> apps, List<NodeOptions> options)
    {
        Apps = apps;
        Options = options;
    }

    public List<WebApplication> Apps { get; }
    public List<NodeOptions> Options { get; }
    public IGrainFactory Grains => Apps[0].Services.GetRequiredService<IGrainFactory>();
    public SpanHost Host(int i) => Apps[i].Services.GetRequiredService<SpanHost>();

    public static async Task<InProcessPool> StartAsync(string modelPath, IReadOnlyList<(int Start, int End)> spans, long? kvBudgetTokens = null,
        string prefix = "node", Func<int, Action<WebApplicationBuilder>?>? configureHost = null)
    {
        var apps = new List<WebApplication>();
        var options = new List<NodeOptions>();
        string? seed = null;
        try
        {
            for (var i = 0; i < spans.Count; i++)
            {
                var o = new NodeOptions
                {
                    ModelPath = modelPath,
                    LayerStart = spans[i].Start,
                    LayerEnd = spans[i].End,
                    NodeId = $"{prefix}-{i}",
                    GrpcPort = Ports.Free(),
                    SiloPort = Ports.Free(),
                    PrimarySiloEndpoint = seed,
                    KvBudgetTokens = kvBudgetTokens,
                    Threads = 1,
                    ReportPeriod = TimeSpan.FromMilliseconds(500),
                    Security = TestPki.Settings(),
                };
                seed ??= $"127.0.0.1:{o.SiloPort}";
                var app = NodeHost.Build(o, logging => logging.SetMinimumLevel(LogLevel.Warning), configureHost?.Invoke(i));
                apps.Add(app);
                options.Add(o);
                using var startTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                await app.StartAsync(startTimeout.Token);
            }
            return new InProcessPool(apps, options);
        }
        catch
        {
            foreach (var app in apps) await app.DisposeAsync();
            throw;
        }
    }

    /// <summary>Every node of this pool as a route hop, in order.</summary>
    public List<RouteHop> Route() =>
        Options.Select(o => new RouteHop { NodeId = o.ResolvedNodeId, Endpoint = o.GrpcEndpoint, LayerStart = o.LayerStart, LayerEnd = o.LayerEnd }).ToList();

    /// <summary>The open frame for this pool's whole chain, built where every caller builds it (HopFrames), with the gateway's ticket.</summary>
    public OpenSession OpenMessage(string sessionId, string modelId, int maxTokens, HiddenType wire = HiddenType.F16)
    {
        var route = Route();
        return HopFrames.Open(sessionId, modelId, maxTokens, wire, route, TestTickets.For(sessionId, route, maxTokens, resume: false));
    }

    public async ValueTask DisposeAsync()
    {
        for (var i = Apps.Count - 1; i >= 0; i--)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            try { await Apps[i].StopAsync(timeout.Token); } catch (OperationCanceledException) { }
            await Apps[i].DisposeAsync();
        }
    }
}

public static class Channels
{
    /// <summary>A data-plane channel to node <paramref name="nodeId"/> at <paramref name="endpoint"/>, over mutual TLS as a test member.</summary>
    public static GrpcChannel For(string endpoint, string nodeId, string poolId = TestPki.DefaultPool, int maxMessage = 256 * 1024 * 1024) =>
        TestPki.Channel(endpoint, nodeId, poolId, maxMessage);

    public static GrpcChannel For(NodeOptions node) => For(node.GrpcEndpoint, node.ResolvedNodeId);

    public static Task<SessionHopClient> OpenAsync(GrpcChannel channel, OpenSession open, int width) =>
        SessionHopClient.OpenAsync(channel.CreateCallInvoker(), open, width, TimeSpan.FromSeconds(30));
}

/// <summary>Route tickets as the gateway signs them, from the test run's pool CA (<see cref="TestPki"/>).</summary>
public static class TestTickets
{
    private static readonly ConcurrentDictionary<string, PoolAuthority> Authorities = new(StringComparer.OrdinalIgnoreCase);

    public static PoolAuthority Authority(string poolId = TestPki.DefaultPool) => Authorities.GetOrAdd(poolId, id => TestPki.Authority(id));

    public static ByteString For(string sessionId, IReadOnlyList<RouteHop> route, int maxTokens, bool resume, string poolId = TestPki.DefaultPool,
        TimeSpan? lifetime = null) =>
        RouteTickets.Issue(Authority(poolId), sessionId, route, maxTokens, resume, lifetime ?? RouteTickets.DefaultLifetime);

    /// <summary>Signs <paramref name="open"/> (sent to <paramref name="firstNodeId"/>) for exactly its session, span, tail, size and resume flag.</summary>
    public static OpenSession Sign(OpenSession open, string firstNodeId, string poolId = TestPki.DefaultPool)
    {
        var route = new List<RouteHop> { new() { NodeId = firstNodeId, LayerStart = open.LayerStart, LayerEnd = open.LayerEnd } };
        route.AddRange(open.Next);
        open.Ticket = For(open.SessionId, route, open.MaxTokens, open.Resume, poolId);
        return open;
    }
}
