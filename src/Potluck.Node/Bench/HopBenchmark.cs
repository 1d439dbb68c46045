using System.Diagnostics;
using Google.Protobuf;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Potluck.Hosting;
using Potluck.Protocol.V1;
using Potluck.Protocol;
using Potluck.Security;
using Potluck.Node.Compute;
using Potluck.Node.Hosting;
using Potluck.Node.Hops;
using Potluck.Node.Telemetry;

namespace Potluck.Node.Bench;

public sealed record HopBenchmarkOptions
{
    /// <summary>Hidden size of the rows (2048 = a 1B-3B class model).</summary>
    public int Width { get; init; } = 2048;
    /// <summary>Stages in the long chain; the per-hop cost is the difference to a one-stage route.</summary>
    public int Stages { get; init; } = 3;
    public int WarmupSteps { get; init; } = 200;
    public int Steps { get; init; } = 2000;
    public HiddenType WireType { get; init; } = HiddenType.F16;
}

/// <param name="SingleStageMedianMs">Round trip caller → one stage → caller, per 1-row step.</param>
/// <param name="ChainMedianMs">Round trip caller → N stages (pushed stage to stage) → relayed back, per step.</param>
/// <param name="PerHopMedianMs">(chain − single) / (N − 1): what each extra hop adds, at the median.</param>
public sealed record HopBenchmarkResult(
    int Width, int Stages, int Steps, HiddenType WireType,
    double SingleStageMedianMs, double SingleStageP99Ms,
    double ChainMedianMs, double ChainP99Ms,
    double PerHopMedianMs, double PerHopP99Ms,
    string Method);

/// <summary>
/// Measures the data plane's cost per hop on loopback with real Kestrel servers, real gRPC streams and
/// the node's own Stage service, but with transport-only stages (<see cref="EchoCompute"/>: output = input),
/// so no layer compute is included. Pure transport is what a hop adds on top of the span's compute.
/// </summary>
public static class HopBenchmark
{
    public static async Task<HopBenchmarkResult> RunAsync(HopBenchmarkOptions options, IProgress<string>? progress = null, CancellationToken ct = default)
    {
        if (options.Stages < 2) throw new ArgumentOutOfRangeException(nameof(options), "needs at least 2 stages to isolate one hop");
        // Stages check route tickets like real ones: a throwaway pool CA for this run signs them.
        var pool = new PoolSecuritySettings(PoolDirectory: Path.Combine(Path.GetTempPath(), $"potluck-hop-bench-{Guid.NewGuid():N}"));
        double[] single, chain;
        try
        {
            single = await MeasureChainAsync(options, 1, pool, progress, ct);
            chain = await MeasureChainAsync(options, options.Stages, pool, progress, ct);
        }
        finally
        {
            try { Directory.Delete(pool.PoolDirectory!, recursive: true); } catch (IOException) { }
        }
        var hops = options.Stages - 1;
        return new HopBenchmarkResult(options.Width, options.Stages, options.Steps, options.WireType,
            Percentile(single, 0.5), Percentile(single, 0.99), Percentile(chain, 0.5), Percentile(chain, 0.99),
            (Percentile(chain, 0.5) - Percentile(single, 0.5)) / hops,
            (Percentile(chain, 0.99) - Percentile(single, 0.99)) / hops,
            $"loopback gRPC, transport-only echo stages, 1x{options.Width} {options.WireType} rows; per hop = (chain of {options.Stages} - single) / {hops}");
    }

    private static async Task<double[]> MeasureChainAsync(HopBenchmarkOptions options, int stages, PoolSecuritySettings pool, IProgress<string>? progress,
        CancellationToken ct)
    {
        var apps = new List<WebApplication>();
        var endpoints = new List<string>();
        try
        {
            for (var i = 0; i < stages; i++)
            {
                var port = FreePort();
                var app = BuildEchoStage(options.Width, i, stages, port, pool);
                await app.StartAsync(ct);
                apps.Add(app);
                endpoints.Add($"http://127.0.0.1:{port}");
            }
            var route = Enumerable.Range(0, stages).Select(i => new RouteHop { NodeId = $"echo-{i}", Endpoint = endpoints[i], LayerStart = i, LayerEnd = i + 1 }).ToList();
            var maxTokens = options.WarmupSteps + options.Steps + 1;
            ByteString ticket;
            using (var authority = PoolAuthority.Load(pool.PoolDirectory!, BenchPool))
                ticket = RouteTickets.Issue(authority, "hop-bench", route, maxTokens, resume: false, RouteTickets.DefaultLifetime);
            var open = HopFrames.Open("hop-bench", "echo", maxTokens, options.WireType, route, ticket);
            using var channel = StageChannels.Create(endpoints[0], StageHosting.MaxMessageBytes(1, options.Width));
            await using var client = await SessionHopClient.OpenAsync(channel.CreateCallInvoker(), open, options.Width, TimeSpan.FromSeconds(30), ct);
            var row = new float[options.Width];
            var output = new float[options.Width];
            for (var i = 0; i < row.Length; i++) row[i] = MathF.Sin(i) * 0.5f;
            var timeout = TimeSpan.FromSeconds(30);
            var times = new double[options.Steps];
            var position = 0;
            for (var i = 0; i < options.WarmupSteps; i++)
                await client.StepAsync(row, 1, position++, true, output, timeout, ct: ct);
            for (var i = 0; i < options.Steps; i++)
            {
                var start = Stopwatch.GetTimestamp();
                await client.StepAsync(row, 1, position++, true, output, timeout, ct: ct);
                times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            }
            progress?.Report($"{stages} stage(s): median {Percentile(times, 0.5):F3} ms, p99 {Percentile(times, 0.99):F3} ms");
            await client.CloseAsync(timeout);
            return times;
        }
        finally
        {
            foreach (var app in apps)
            {
                await app.StopAsync(CancellationToken.None);
                await app.DisposeAsync();
            }
        }
    }

    private const string BenchPool = "hop-bench";

    private static WebApplication BuildEchoStage(int width, int index, int stages, int port, PoolSecuritySettings pool)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ApplicationName = "Potluck.HopBench", ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        StageHosting.AddStage(builder, System.Net.IPAddress.Loopback, port, StageHosting.MaxMessageBytes(1, width));
        builder.Services.AddSingleton(_ => MemberSecurity.ForAuthority(pool, BenchPool, $"echo-{index}"));
        builder.Services.AddSingleton(sp => new SpanHost(new EchoCompute(width, index, index + 1, stages), $"echo-{index}",
            sp.GetRequiredService<ILogger<SpanHost>>(), sp.GetRequiredService<NodeTelemetry>(), maxRowsPerStep: 1));
        var app = builder.Build();
        StageHosting.MapStage(app);
        return app;
    }

    private static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static double Percentile(double[] values, double p)
    {
        var sorted = (double[])values.Clone();
        Array.Sort(sorted);
        var index = (int)Math.Ceiling(p * sorted.Length) - 1;
        return sorted[Math.Clamp(index, 0, sorted.Length - 1)];
    }
}
