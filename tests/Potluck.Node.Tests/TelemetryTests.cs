using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;
using Potluck.Cluster;
using Potluck.Hosting;
using Potluck.Protocol.V1;
using Potluck.Inference.Gguf;
using Potluck.Node.Telemetry;
using Xunit.Abstractions;

namespace Potluck.Node.Tests;

/// <summary>
/// The node's OpenTelemetry pipeline: trace context carried on the Hop stream reaches the next stage, Orleans
/// grain calls join the caller's trace, the node and Orleans meters are collected, and OTLP export turns on
/// from the standard OTEL_EXPORTER_OTLP_ENDPOINT setting.
/// </summary>
[ProcessTest]
public sealed class TelemetryTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Trace_context_crosses_the_hop_and_grain_calls_and_is_exported()
    {
        await using var receiver = await OtlpReceiver.StartAsync();
        // Exporters add from whichever thread ends an activity: collect into a locked collection, read snapshots.
        var activities = new LockedCollection<Activity>();
        var metrics = new LockedCollection<Metric>();
        var path = TestModels.Small(GgmlType.Q8_0);
        // Exporters only on node 0: its listeners see both in-process nodes' activities.
        await using var pool = await InProcessPool.StartAsync(path, [(0, 2), (2, 4)], kvBudgetTokens: 256, prefix: "otel",
            configureHost: i => i != 0 ? null : builder =>
            {
                builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
                {
                    ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.Endpoint,
                    ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf",
                    ["OTEL_BSP_SCHEDULE_DELAY"] = "100",
                    ["OTEL_METRIC_EXPORT_INTERVAL"] = "200",
                });
                builder.Services.ConfigureOpenTelemetryTracerProvider(tracing => tracing.AddInMemoryExporter(activities));
                builder.Services.ConfigureOpenTelemetryMeterProvider(meters => meters.AddInMemoryExporter(metrics));
            });
        var width = pool.Host(0).Width;
        var modelId = pool.Host(0).ModelId;

        // The caller's context travels only inside the open frame: no ambient activity in this test,
        // so the node's spans can get this trace id from nowhere else.
        Assert.Null(Activity.Current);
        var callerTrace = ActivityTraceId.CreateRandom();
        var callerSpan = ActivitySpanId.CreateRandom();
        var open = pool.OpenMessage("traced", modelId, 32, HiddenType.F32);
        open.Traceparent = $"00-{callerTrace.ToHexString()}-{callerSpan.ToHexString()}-01";
        using (var channel = Channels.For(pool.Options[0]))
        {
            await using var client = await Channels.OpenAsync(channel, open, width);
            var hidden = new float[2 * width];
            for (var i = 0; i < hidden.Length; i++) hidden[i] = MathF.Sin(i) * 0.1f;
            var result = new float[width];
            await client.StepAsync(hidden, 2, 0, lastRowOnly: true, result, Timeout);
            await client.StepAsync(hidden.AsMemory(0, width), 1, 2, lastRowOnly: true, result, Timeout);
            await client.CloseAsync(Timeout);
        }

        List<Activity> Steps(string nodeId)
        {
            return activities.Snapshot().Where(a => a.Source.Name == NodeTelemetry.Name && a.OperationName == "potluck.node.step"
                    && (string?)a.GetTagItem("potluck.node") == nodeId && a.TraceId == callerTrace).ToList();
        }
        try
        {
            await WaitUntil(() => Steps("otel-0").Count == 2 && Steps("otel-1").Count == 2);
        }
        finally
        {
            foreach (var a in activities.Snapshot().Where(a => a.Source.Name == NodeTelemetry.Name))
                    output.WriteLine($"{a.OperationName} node={a.GetTagItem("potluck.node")} trace={a.TraceId} parent={a.ParentSpanId} span={a.SpanId}");
        }
        var first = Steps("otel-0");
        var second = Steps("otel-1");
        // First stage: children of the caller's span. Second stage: children of the first stage's step spans,
        // i.e. the context went node 0 → node 1 on the forwarded frames.
        Assert.All(first, a => Assert.Equal(callerSpan, a.ParentSpanId));
        Assert.All(second, a => Assert.Contains(a.ParentSpanId, first.Select(f => f.SpanId)));
        Assert.All(first.Concat(second), a => Assert.Equal(ActivityKind.Server, a.Kind));

        // Orleans: a grain call made under a caller activity is served, on the other silo, inside the same trace.
        using (var caller = new Activity("test.grain-call").SetIdFormat(ActivityIdFormat.W3C))
        {
            caller.ActivityTraceFlags = ActivityTraceFlags.Recorded;
            caller.Start();
            var o = pool.Options[1];
            await pool.Grains.GetGrain<IShardGrain>(ShardKeys.For(o.ResolvedNodeId, o.LayerStart, o.LayerEnd)).GetStatus();
            caller.Stop();
            List<Activity> OrleansSpans()
            {
                return activities.Snapshot().Where(a => a.Source.Name.StartsWith("Microsoft.Orleans", StringComparison.Ordinal) && a.TraceId == caller.TraceId).ToList();
            }
            await WaitUntil(() => OrleansSpans().Any(a => a.Kind == ActivityKind.Server));
            output.WriteLine("Orleans spans in the caller's trace: " + string.Join(", ", OrleansSpans().Select(a => $"{a.Source.Name}/{a.DisplayName}/{a.Kind}")));
        }

        // Metrics: the node's own meter and Orleans' meter both reach the node's MeterProvider.
        var meterProvider = pool.Apps[0].Services.GetRequiredService<MeterProvider>();
        Assert.True(meterProvider.ForceFlush(10_000));
        // The periodic reader (200 ms) exports concurrently with the flush and refills the exported list as it goes,
        // so one snapshot can miss instruments: read again (bounded) until the node's own ones are there.
        List<string> names = [];
        try
        {
            await WaitUntil(() =>
            {
                names = metrics.Snapshot().Select(m => m.Name).Distinct().ToList();
                if (names.Contains("potluck.node.steps") && names.Contains("potluck.node.step_latency")) return true;
                meterProvider.ForceFlush(1_000);
                return false;
            });
        }
        catch (TimeoutException)
        {
            // The assertions below name what is missing.
        }
        output.WriteLine("metrics: " + string.Join(", ", names.Order()));
        Assert.Contains("potluck.node.steps", names);
        Assert.Contains("potluck.node.step_latency", names);
        Assert.Contains(names, n => n.StartsWith("orleans", StringComparison.Ordinal));
        long steps = 0;
        foreach (var metric in metrics.Snapshot().Where(m => m.Name == "potluck.node.steps"))
                foreach (ref readonly var point in metric.GetMetricPoints())
                    steps = Math.Max(steps, point.GetSumLong());
        Assert.True(steps >= 2, $"potluck.node.steps = {steps}");

        // OTLP: node 0 had OTEL_EXPORTER_OTLP_ENDPOINT, so traces and metrics arrive at the loopback collector.
        await WaitUntil(() => receiver.Requests.ContainsKey("/v1/traces") && receiver.Requests.ContainsKey("/v1/metrics"));
        output.WriteLine("OTLP requests: " + string.Join(", ", receiver.Requests.Select(kv => $"{kv.Key} x{kv.Value}")));
    }

    /// <summary>
    /// The one setup every host uses (Potluck.Hosting): with OTEL_EXPORTER_OTLP_ENDPOINT set, a Potluck.* meter, its
    /// activity source and the host's logs all reach the collector. The gateway's meter is wired exactly like this; before
    /// the shared setup its metrics never reached OTLP.
    /// </summary>
    [Fact]
    public async Task The_shared_host_setup_exports_traces_metrics_and_logs_over_otlp()
    {
        await using var receiver = await OtlpReceiver.StartAsync();
        const string name = "Potluck.Gateway";
        var builder = WebApplication.CreateSlimBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            [PotluckTelemetry.OtlpEndpointKey] = receiver.Endpoint,
            ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf",
            ["OTEL_BSP_SCHEDULE_DELAY"] = "100",
            ["OTEL_BLRP_SCHEDULE_DELAY"] = "100",
            ["OTEL_METRIC_EXPORT_INTERVAL"] = "200",
        });
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        builder.AddPotluckTelemetry(new TelemetryIdentity("potluck-gateway", "gateway-otlp-test"), [name], [name]);
        await using var app = builder.Build();
        using var timeout = new CancellationTokenSource(Timeout);
        await app.StartAsync(timeout.Token);

        using var source = new ActivitySource(name);
        using var meter = new Meter(name);
        var requests = meter.CreateCounter<long>("potluck.gateway.requests");
        using (source.StartActivity("potluck.test.request")) requests.Add(1);
        app.Services.GetRequiredService<ILoggerFactory>().CreateLogger(name).LogWarning("exported over OTLP");

        await WaitUntil(() => receiver.Requests.ContainsKey("/v1/traces") && receiver.Requests.ContainsKey("/v1/metrics") && receiver.Requests.ContainsKey("/v1/logs"));
        output.WriteLine("OTLP requests: " + string.Join(", ", receiver.Requests.Select(kv => $"{kv.Key} x{kv.Value}")));
        await app.StopAsync(timeout.Token);
    }

    private static async Task WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("condition not met in time");
            await Task.Delay(50);
        }
    }

    private sealed class LockedCollection<T> : ICollection<T>
    {
        private readonly List<T> _items = [];

        public int Count { get { lock (_items) return _items.Count; } }
        public bool IsReadOnly => false;
        public List<T> Snapshot() { lock (_items) return [.. _items]; }
        public void Add(T item) { lock (_items) _items.Add(item); }
        public void Clear() { lock (_items) _items.Clear(); }
        public bool Contains(T item) { lock (_items) return _items.Contains(item); }
        public void CopyTo(T[] array, int arrayIndex) { lock (_items) _items.CopyTo(array, arrayIndex); }
        public bool Remove(T item) { lock (_items) return _items.Remove(item); }
        public IEnumerator<T> GetEnumerator() => Snapshot().GetEnumerator();
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }

    /// <summary>A minimal OTLP/HTTP collector on loopback: accepts protobuf exports and counts them by path.</summary>
    private sealed class OtlpReceiver : IAsyncDisposable
    {
        private readonly WebApplication _app;

        private OtlpReceiver(WebApplication app, string endpoint)
        {
            _app = app;
            Endpoint = endpoint;
        }

        public string Endpoint { get; }
        public ConcurrentDictionary<string, int> Requests { get; } = new();

        public static async Task<OtlpReceiver> StartAsync()
        {
            var port = Ports.Free();
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, port));
            var app = builder.Build();
            var receiver = new OtlpReceiver(app, $"http://127.0.0.1:{port}");
            app.MapPost("/{**signal}", async (HttpContext context) =>
            {
                using var body = new MemoryStream();
                await context.Request.Body.CopyToAsync(body);
                if (body.Length > 0 && context.Request.ContentType == "application/x-protobuf")
                    receiver.Requests.AddOrUpdate(context.Request.Path.Value!, 1, (_, n) => n + 1);
                // An empty protobuf message is a valid Export*ServiceResponse (full success).
                context.Response.ContentType = "application/x-protobuf";
            });
            using var timeout = new CancellationTokenSource(Timeout);
            await app.StartAsync(timeout.Token);
            return receiver;
        }

        public async ValueTask DisposeAsync()
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            await _app.StopAsync(timeout.Token);
            await _app.DisposeAsync();
        }
    }
}
