namespace Potluck.Inference.Models;

/// <summary>
/// SplitMix64: a tiny PRNG whose output is fixed by its published algorithm, so generated
/// test models are byte-identical across .NET versions (System.Random's algorithm may change).
/// </summary>
public struct SplitMix64(ulong seed)
{
    private ulong _state = seed;

    public ulong NextUInt64()
    {
        var z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1) with 24 bits of precision (exactly representable as float).</summary>
    public float NextFloat() => (NextUInt64() >> 40) * (1.0f / (1 << 24));

    /// <summary>Uniform in [-bound, bound).</summary>
    public float NextSymmetric(float bound) => (NextFloat() * 2f - 1f) * bound;

    /// <summary>Derives a stream seed from a base seed and a name (FNV-1a), so each tensor's values depend only on (seed, name).</summary>
    public static ulong Derive(int seed, string name)
    {
        var hash = 0xCBF29CE484222325UL ^ (ulong)(uint)seed;
        foreach (var ch in name)
        {
            hash ^= ch;
            hash *= 0x100000001B3UL;
        }
        return hash;
    }
}
