using System.Diagnostics;
using Potluck.Inference.Engine;

namespace Potluck.Node.Compute;

/// <summary>The node's measured decode speed, advertised in silo metadata and used by the speed probe.</summary>
public static class DecodeSpeed
{
    /// <summary>
    /// Times a one-row decode forward at position 0 (one warm-up, then the median of <paramref name="repeats"/>) on a
    /// scratch session, before the node serves anything. Nodes starting together on one machine measured up to 100x
    /// apart with a median of 3 and no warm-up.
    /// </summary>
    public static double MeasureMs(IStageCompute compute, int repeats = 7)
    {
        const string probe = "__potluck-speed-probe";
        var input = new float[compute.Width];
        var output = new float[compute.Width];
        var rng = new Random(1234);
        for (var i = 0; i < input.Length; i++) input[i] = (float)(rng.NextDouble() - 0.5);
        var times = new double[repeats];
        compute.OpenSession(probe, 4);
        try
        {
            compute.Forward([new SpanSegment(probe, 0, 1, compute.IsFinal)], input, output);
            for (var r = 0; r < repeats; r++)
            {
                compute.Truncate(probe, 0);
                var start = Stopwatch.GetTimestamp();
                compute.Forward([new SpanSegment(probe, 0, 1, compute.IsFinal)], input, output);
                times[r] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            }
        }
        finally
        {
            compute.CloseSession(probe);
        }
        Array.Sort(times);
        return times[repeats / 2];
    }
}
