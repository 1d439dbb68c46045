using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;

namespace Potluck.Inference.Tests;

/// <summary>
/// The engine's "a steady decode loop allocates nothing" claim, checked: 1000 one-row decode steps through
/// <see cref="LayerSpan.Forward"/> allocate nothing on the calling thread once warmed up.
/// </summary>
public sealed class SpanStepAllocationTests
{
    private const int Steps = 1000;
    private const int FirstPosition = 8;

    [Fact]
    public void A_thousand_decode_steps_allocate_nothing()
    {
        using var model = GgufModel.Open(TestModels.Small(GgmlType.Q8_0));
        using var span = new LayerSpan(model, 0, model.Info.LayerCount, new SpanOptions { Threads = 1 });
        var context = model.Info.ContextLength;
        span.OpenSession("s", context);
        var width = span.Width;
        var rng = new Random(2);
        var row = new float[width];
        for (var i = 0; i < width; i++) row[i] = (float)(rng.NextDouble() - 0.5) * 0.2f;
        var output = new float[width];
        var prompt = new float[FirstPosition * width];
        for (var r = 0; r < FirstPosition; r++) row.CopyTo(prompt, r * width);
        span.Forward([new SpanSegment("s", 0, FirstPosition, LastRowOnly: true)], prompt, output);
        // Positions wrap before the context ends: the same 1000 steps, each at a position the warm-up pass has seen
        // (masks and graph sizes grow with the position; the pooled buffers grow once, in the warm-up).
        var positions = context - FirstPosition - 1;
        var segment = new SpanSegment[1];

        DecodeSteps(span, segment, row, output, positions, positions + 1); // warm-up: every position once, and one wrap (which gives KV pages back)
        var before = GC.GetAllocatedBytesForCurrentThread();
        DecodeSteps(span, segment, row, output, positions, Steps);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.True(allocated == 0, $"{Steps} decode steps allocated {allocated} bytes ({allocated / (double)Steps:F1} per step)");
        Assert.All(output, value => Assert.True(float.IsFinite(value)));
    }

    private static void DecodeSteps(LayerSpan span, SpanSegment[] segment, float[] row, float[] output, int positions, int steps)
    {
        for (var step = 0; step < steps; step++)
        {
            var position = FirstPosition + step % positions;
            span.Truncate("s", position);
            segment[0] = new SpanSegment("s", position, 1, LastRowOnly: true);
            span.Forward(segment, row, output);
        }
    }
}
