using BenchmarkDotNet.Attributes;
using Potluck.Protocol;
using Potluck.Protocol.V1;

namespace Potluck.Benchmarks;

/// <summary>One decode step's hidden-state row through <see cref="HiddenStateCodec"/>, at a real model's width.</summary>
[MemoryDiagnoser]
public class CodecBenchmarks
{
    private float[] _row = [];
    private float[] _decoded = [];
    private byte[] _wire = [];

    /// <summary>Llama 3 8B's n_embd.</summary>
    [Params(4096)]
    public int Width { get; set; }

    [Params(HiddenType.F16, HiddenType.F32)]
    public HiddenType Type { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        _row = new float[Width];
        for (var i = 0; i < _row.Length; i++) _row[i] = (float)(rng.NextDouble() - 0.5);
        _decoded = new float[Width];
        _wire = new byte[Width * HiddenStateCodec.BytesPerElement(Type)];
        HiddenStateCodec.Encode(_row, Type, _wire);
    }

    [Benchmark]
    public int Encode() => HiddenStateCodec.Encode(_row, Type, _wire);

    [Benchmark]
    public bool Decode() => HiddenStateCodec.TryDecode(_wire, Type, _decoded, out var finite) && finite;
}
