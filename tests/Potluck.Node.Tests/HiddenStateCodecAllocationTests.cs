using Potluck.Protocol;
using Potluck.Protocol.V1;

namespace Potluck.Node.Tests;

/// <summary>The codec's "allocation-free" claim, checked: a decode step's row encoded and decoded 1000 times allocates nothing.</summary>
public sealed class HiddenStateCodecAllocationTests
{
    private const int Steps = 1000;
    private const int Width = 4096;

    [Theory]
    [InlineData(HiddenType.F16)]
    [InlineData(HiddenType.F32)]
    public void Encoding_and_decoding_a_row_allocates_nothing_per_step(HiddenType type)
    {
        var rng = new Random(3);
        var row = new float[Width];
        for (var i = 0; i < row.Length; i++) row[i] = (float)(rng.NextDouble() - 0.5);
        var wire = new byte[Width * HiddenStateCodec.BytesPerElement(type)];
        var decoded = new float[Width];
        var finiteSteps = 0;

        RoundTrip(row, type, wire, decoded, ref finiteSteps); // warm-up: JIT, static constructor
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var step = 0; step < Steps; step++) RoundTrip(row, type, wire, decoded, ref finiteSteps);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocated);
        Assert.Equal(Steps + 1, finiteSteps);
        if (type == HiddenType.F32) Assert.Equal(row, decoded);
        else Assert.Equal((float)(Half)row[7], decoded[7]);
    }

    private static void RoundTrip(float[] row, HiddenType type, byte[] wire, float[] decoded, ref int finiteSteps)
    {
        var bytes = HiddenStateCodec.Encode(row, type, wire);
        Assert.True(HiddenStateCodec.TryDecode(wire.AsSpan(0, bytes), type, decoded, out var finite));
        if (finite) finiteSteps++;
    }
}
