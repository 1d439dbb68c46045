using BenchmarkDotNet.Attributes;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Benchmarks;

/// <summary>
/// <see cref="GraphRunner"/>'s per-step cycle on its own (begin a graph in the reused arena, allocate its tensors in the
/// reused compute buffer, write the input, compute, read, end) on a small weightless graph: rms_norm(x) * x + x over
/// one row. Shows the runner's own cost and allocations apart from any layer math.
/// </summary>
[MemoryDiagnoser]
public class GraphRunnerBenchmarks
{
    private GraphRunner? _runner;
    private float[] _input = [];
    private float[] _output = [];

    [Params(4096)]
    public int Width { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        NativeRuntime.EnsureLoaded();
        _runner = new GraphRunner(threads: 1);
        var rng = new Random(1);
        _input = new float[Width];
        for (var i = 0; i < Width; i++) _input[i] = (float)(rng.NextDouble() - 0.5);
        _output = new float[Width];
    }

    [Benchmark]
    public float Step()
    {
        var runner = _runner!;
        var (ctx, graph) = runner.Begin(16);
        try
        {
            var x = Ggml.ggml_new_tensor_1d(ctx, (int)GgmlType.F32, Width);
            Ggml.ggml_set_input(x);
            var y = Ggml.ggml_add(ctx, Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, x, 1e-5f), x), x);
            Ggml.ggml_set_output(y);
            Ggml.ggml_build_forward_expand(graph, y);
            runner.Allocate(graph);
            GraphRunner.Write(x, (ReadOnlySpan<float>)_input);
            runner.Compute(graph);
            GraphRunner.Read(y, _output);
        }
        finally
        {
            runner.End();
        }
        return _output[0];
    }

    [GlobalCleanup]
    public void Cleanup() => _runner?.Dispose();
}
