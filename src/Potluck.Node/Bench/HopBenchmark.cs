using System.Diagnostics;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Potluck.Hosting;
using Potluck.Protocol.V1;
using Potluck.Protocol;
using Potluck.Node.Compute;
using Potluck.Node.Hosting;
using Potluck.Node.Telemetry;
using Potluck.Security;

namespace Potluck.Node.Bench;

public sealed record HopBenchmarkOptions
{
    /// <summary>Hidden size of the rows (2048 = a 1B-3B class model).</summary>
    public int Width { get; init; } = 2048;
    /// <summary>Stages in the long chain; the per-hop cost is the difference to a one-stage route.</summary>
    public int Stages { get; init; } = 3;
    /// <summary>Unmeasured 1-row steps before each measurement (fewer at more rows, see <see cref="StepsFor"/>).</summary>
    public int WarmupSteps { get; init; } = 200;
    /// <summary>Measured 1-row steps per measurement.</summary>
    public int Steps { get; init; } = 1000;
    public HiddenType WireType { get; init; } = HiddenType.F16;
    /// <summary>Interleaved (plaintext, TLS) pairs per row count; figures are the median and the minimum over them.</summary>
    public int Pairs { get; init; } = 5;
    /// <summary>Rows per step: 1 is a decode step, 512 a prefill chunk.</summary>
    public IReadOnlyList<int> RowCounts { get; init; } = [1, 512];

    /// <summary>A 512-row step moves 512 times the bytes: the step counts shrink with the rows so each measurement takes about as long.</summary>
    public (int Warmup, int Steps) StepsFor(int rows) =>
        rows <= 1 ? (WarmupSteps, Steps) : (Math.Max(2, WarmupSteps * 4 / rows), Math.Max(10, Steps * 8 / rows));
}

/// <summary>One measurement pair: the medians of its steps, plaintext and TLS, each a one-stage route and the chain.</summary>
/// <param name="TlsCostPerHopMs">TLS per hop − plaintext per hop: what mutual TLS adds to each extra hop.</param>
public sealed record HopPair(double PlainSingleMs, double PlainChainMs, double TlsSingleMs, double TlsChainMs,
    double PlainPerHopMs, double TlsPerHopMs, double TlsCostPerHopMs);

/// <summary>The figures of one row count: medians over the pairs (and the minimum of the TLS cost).</summary>
public sealed record HopRowsResult(
    int Rows, int Steps,
    double PlainSingleMedianMs, double PlainChainMedianMs, double TlsSingleMedianMs, double TlsChainMedianMs,
    double PlainPerHopMedianMs, double TlsPerHopMedianMs,
    double TlsCostPerHopMedianMs, double TlsCostPerHopMinMs,
    IReadOnlyList<HopPair> PairResults);

/// <param name="SingleStageMedianMs">Round trip caller → one stage → caller per step, with TLS, at the first row count.</param>
/// <param name="ChainMedianMs">Round trip caller → N stages (pushed stage to stage) → relayed back, with TLS, at the first row count.</param>
/// <param name="PerHopMedianMs">(chain − single) / (N − 1) with TLS at the first row count: what each extra hop adds.</param>
/// <param name="TlsCostPerHopMs">Median over the pairs of what TLS adds per hop at the first row count.</param>
/// <param name="TlsCostPerHopMinMs">The same, the minimum over the pairs.</param>
public sealed record HopBenchmarkResult(
    int Width, int Stages, HiddenType WireType, int Pairs,
    double SingleStageMedianMs, double ChainMedianMs, double PerHopMedianMs,
    double TlsCostPerHopMs, double TlsCostPerHopMinMs,
    IReadOnlyList<HopRowsResult> ByRows,
    string Method);

/// <summary>
/// Measures the data plane's cost per hop on loopback with real Kestrel servers, real gRPC streams and the node's own
/// Stage service, with transport-only stages (<see cref="EchoCompute"/>: output = input), so no layer compute is
/// included. Every figure is measured twice, over mutual TLS with pool certificates (what nodes serve) and over
/// plaintext h2c (only here, inside this process, as the baseline), as interleaved pairs so that load on the machine
/// hits both alike. Each step rewinds to position 0, so any number of steps fits the session.
/// </summary>
public static class HopBenchmark
{
    private const string PoolId = "hop-bench";

    public static async Task<HopBenchmarkResult> RunAsync(HopBenchmarkOptions options, IProgress<string>? progress = null, CancellationToken ct = default)
    {
        if (options.Stages < 2) throw new ArgumentOutOfRangeException(nameof(options), "needs at least 2 stages to isolate one hop");
        if (options.Pairs < 1) throw new ArgumentOutOfRangeException(nameof(options), "needs at least 1 pair");
        if (options.RowCounts.Count == 0 || options.RowCounts.Any(r => r < 1)) throw new ArgumentOutOfRangeException(nameof(options), "row counts must be at least 1");
        var maxRows = options.RowCounts.Max();
        var maxMessage = StageHosting.MaxMessageBytes(maxRows, options.Width);
        var pki = Path.Combine(Path.GetTempPath(), $"potluck-hop-bench-{Environment.ProcessId}-{Guid.NewGuid():N}");
        // Stages check route tickets like real ones (plaintext ones too): this run's throwaway CA signs them.
        using var authority = PoolAuthority.Create(Path.Combine(pki, "pool"), PoolId);
        var securities = new List<MemberSecurity>();
        var apps = new List<WebApplication>();
        try
        {
            MemberSecurity Member(string nodeId)
            {
                var security = MemberSecurity.ForMember(new PoolSecuritySettings(Path.Combine(pki, "pool"), Path.Combine(pki, "identity", nodeId)), PoolId, nodeId);
                securities.Add(security);
                return security;
            }

            async Task<Route> StartAsync(int stages, bool tls)
            {
                var endpoints = new List<string>();
                for (var i = 0; i < stages; i++)
                {
                    var port = FreePort();
                    var app = BuildEchoStage(options.Width, i, stages, port, maxRows, Member($"echo-{i}"), tls);
                    await app.StartAsync(ct);
                    apps.Add(app);
                    endpoints.Add($"https://127.0.0.1:{port}");
                }
                return new Route(endpoints, stages);
            }

            var client = Member("bench-client");
            using var tlsChannels = new MemberChannels(client.Credential, client.Trust, maxMessage);
            using var plainChannels = MemberChannels.PlaintextForBenchmark(maxMessage);
            var plainSingle = await StartAsync(1, tls: false);
            var plainChain = await StartAsync(options.Stages, tls: false);
            var tlsSingle = await StartAsync(1, tls: true);
            var tlsChain = await StartAsync(options.Stages, tls: true);
            var session = 0;
            var hops = options.Stages - 1;
            var byRows = new List<HopRowsResult>();
            foreach (var rows in options.RowCounts)
            {
                var (warmup, steps) = options.StepsFor(rows);
                var pairs = new List<HopPair>();
                for (var p = 0; p < options.Pairs; p++)
                {
                    // Alternate which transport goes first, so a slow start or a warming machine does not favour one.
                    var tlsFirst = p % 2 == 1;
                    double ps = 0, pc = 0, ts = 0, tc = 0;
                    for (var half = 0; half < 2; half++)
                    {
                        if ((half == 0) == tlsFirst)
                        {
                            ts = await MeasureAsync(tlsChannels, authority, tlsSingle, options, rows, warmup, steps, session++, ct);
                            tc = await MeasureAsync(tlsChannels, authority, tlsChain, options, rows, warmup, steps, session++, ct);
                        }
                        else
                        {
                            ps = await MeasureAsync(plainChannels, authority, plainSingle, options, rows, warmup, steps, session++, ct);
                            pc = await MeasureAsync(plainChannels, authority, plainChain, options, rows, warmup, steps, session++, ct);
                        }
                    }
                    var plainHop = (pc - ps) / hops;
                    var tlsHop = (tc - ts) / hops;
                    pairs.Add(new HopPair(ps, pc, ts, tc, plainHop, tlsHop, tlsHop - plainHop));
                    progress?.Report($"{rows} row(s), pair {p + 1}/{options.Pairs}: per hop {plainHop:F3} ms plaintext, {tlsHop:F3} ms TLS");
                }
                byRows.Add(new HopRowsResult(rows, steps,
                    Median(pairs.Select(x => x.PlainSingleMs)), Median(pairs.Select(x => x.PlainChainMs)),
                    Median(pairs.Select(x => x.TlsSingleMs)), Median(pairs.Select(x => x.TlsChainMs)),
                    Median(pairs.Select(x => x.PlainPerHopMs)), Median(pairs.Select(x => x.TlsPerHopMs)),
                    Median(pairs.Select(x => x.TlsCostPerHopMs)), pairs.Min(x => x.TlsCostPerHopMs), pairs));
            }
            var first = byRows[0];
            return new HopBenchmarkResult(options.Width, options.Stages, options.WireType, options.Pairs,
                first.TlsSingleMedianMs, first.TlsChainMedianMs, first.TlsPerHopMedianMs, first.TlsCostPerHopMedianMs, first.TlsCostPerHopMinMs, byRows,
                $"loopback gRPC, transport-only echo stages, {options.Width}-wide {options.WireType} rows; per hop = (chain of {options.Stages} - single) / {hops}; " +
                $"mutual TLS (pool certificates) vs plaintext h2c as {options.Pairs} interleaved pairs, each the median of its steps; figures are medians over the pairs");
        }
        finally
        {
            foreach (var app in apps)
            {
                await app.StopAsync(CancellationToken.None);
                await app.DisposeAsync();
            }
            foreach (var security in securities) security.Dispose();
            try { Directory.Delete(pki, recursive: true); } catch (IOException) { }
        }
    }

    private sealed record Route(List<string> Endpoints, int Stages);

    /// <summary>One session on <paramref name="route"/>: the median round trip of its measured steps.</summary>
    private static async Task<double> MeasureAsync(MemberChannels channels, PoolAuthority authority, Route route, HopBenchmarkOptions options, int rows, int warmup,
        int steps, int session, CancellationToken ct)
    {
        var hops = Enumerable.Range(0, route.Stages).Select(i => new RouteHop { NodeId = $"echo-{i}", Endpoint = route.Endpoints[i], LayerStart = i, LayerEnd = i + 1 }).ToList();
        var sessionId = $"hop-bench-{session}";
        var ticket = RouteTickets.Issue(authority, sessionId, hops, rows, resume: false, RouteTickets.DefaultLifetime);
        var open = HopFrames.Open(sessionId, "echo", rows, options.WireType, hops, ticket);
        var timeout = TimeSpan.FromSeconds(30);
        await using var client = await SessionHopClient.OpenAsync(channels.Get(route.Endpoints[0], "echo-0").CreateCallInvoker(), open, options.Width, timeout, ct);
        var input = new float[rows * options.Width];
        var output = new float[options.Width];
        for (var i = 0; i < input.Length; i++) input[i] = MathF.Sin(i) * 0.5f;
        var times = new double[steps];
        for (var i = 0; i < warmup + steps; i++)
        {
            var start = Stopwatch.GetTimestamp();
            // Rewind to 0 and send the rows again: the session never outgrows its reservation.
            await client.StepAsync(input, rows, 0, lastRowOnly: true, output, timeout, truncateTo: 0, ct: ct);
            if (i >= warmup) times[i - warmup] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        await client.CloseAsync(timeout);
        return Median(times);
    }

    /// <param name="security">The stage's member identity: its route tickets are checked against it; with <paramref name="tls"/> it also serves mutual TLS.</param>
    private static WebApplication BuildEchoStage(int width, int index, int stages, int port, int maxRows, MemberSecurity security, bool tls)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ApplicationName = "Potluck.HopBench", ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var maxMessage = StageHosting.MaxMessageBytes(maxRows, width);
        if (!tls) StageHosting.AddPlaintextStageForBenchmark(builder, System.Net.IPAddress.Loopback, port, maxMessage);
        else StageHosting.AddStage(builder, System.Net.IPAddress.Loopback, port, maxMessage, security);
        builder.Services.AddSingleton(security);
        builder.Services.AddSingleton(sp => new SpanHost(new EchoCompute(width, index, index + 1, stages), $"echo-{index}",
            sp.GetRequiredService<ILogger<SpanHost>>(), sp.GetRequiredService<NodeTelemetry>(), maxRowsPerStep: maxRows));
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

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.ToArray();
        Array.Sort(sorted);
        var n = sorted.Length;
        return n == 0 ? double.NaN : n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }
}
