using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Potluck.Inference.Engine;
using Potluck.Node.Compute;
using Potluck.Node.Telemetry;

namespace Potluck.Benchmarks;

/// <summary>
/// One decode step (one row) on the small generated test model: straight through the engine's <see cref="LayerSpan"/>,
/// and through the node's compute (<see cref="StageSession.StepAsync"/>, the compute thread, the same span), which is
/// what a Hop step costs a node before the wire.
/// </summary>
[MemoryDiagnoser]
public class SpanStepBenchmarks
{
    /// <summary>Each step decodes at this position (rewinding to it first), so every invocation does the same work.</summary>
    private const int Position = 64;

    private SharedModel.Lease? _lease;
    private LayerSpan? _span;
    private SpanHost? _host;
    private StageSession? _session;
    private float[] _row = [];
    private float[] _output = [];
    private SpanSegment[] _segment = [];

    [GlobalSetup]
    public void Setup()
    {
        _lease = SharedModel.Acquire(BenchmarkModels.Small());
        var model = _lease.Model;
        var width = model.Info.EmbeddingLength;
        var rng = new Random(1);
        _row = new float[width];
        for (var i = 0; i < width; i++) _row[i] = (float)(rng.NextDouble() - 0.5) * 0.2f;
        _output = new float[width];

        _span = new LayerSpan(model, 0, model.Info.LayerCount, new SpanOptions { Threads = 1, KvBudgetTokens = 1024 });
        _span.OpenSession("engine", 256);
        Prefill(_span, "engine");
        _segment = [new SpanSegment("engine", Position, 1, LastRowOnly: true)];

        var compute = new LayerSpanCompute(SharedModel.Acquire(BenchmarkModels.Small()), 0, model.Info.LayerCount,
            new SpanOptions { Threads = 1, KvBudgetTokens = 1024 });
        _host = new SpanHost(compute, "bench", NullLogger<SpanHost>.Instance, new NodeTelemetry());
        _session = _host.Open("node", 256);
        var prompt = _session.RentInput(Position);
        for (var r = 0; r < Position; r++) _row.CopyTo(prompt.Slice(r * width, width));
        Wait(_session.StepAsync(-1, 0, Position, lastRowOnly: true));
    }

    private void Prefill(LayerSpan span, string session)
    {
        var width = _row.Length;
        var prompt = new float[Position * width];
        for (var r = 0; r < Position; r++) _row.CopyTo(prompt, r * width);
        span.Forward([new SpanSegment(session, 0, Position, LastRowOnly: true)], prompt, _output);
    }

    [Benchmark]
    public float LayerSpanForward()
    {
        _span!.Truncate("engine", Position);
        _span.Forward(_segment, _row, _output);
        return _output[0];
    }

    [Benchmark]
    public int NodeComputeStep()
    {
        _row.CopyTo(_session!.RentInput(1));
        return Wait(_session.StepAsync(truncateTo: Position, Position, 1, lastRowOnly: true));
    }

    // Spins instead of blocking: waiting on a ValueTask's task would allocate on the caller's side, which is not the node's cost.
    private static int Wait(ValueTask<int> step)
    {
        var spin = new SpinWait();
        while (!step.IsCompleted) spin.SpinOnce(sleep1Threshold: -1);
        return step.Result;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _host?.Dispose();
        _span?.Dispose();
        _lease?.Dispose();
    }
}
