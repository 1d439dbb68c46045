using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Potluck.Protocol.V1;

namespace Potluck.Protocol;

/// <summary>
/// Converts hidden-state rows between the engine's F32 and the wire's F16/F32 (little endian).
/// Allocation-free: callers pass the destination.
/// </summary>
public static class HiddenStateCodec
{
    static HiddenStateCodec()
    {
        // The wire is little endian and we reinterpret bytes in place.
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("Potluck's wire format needs a little-endian host");
    }

    public static int BytesPerElement(HiddenType type) => type switch
    {
        HiddenType.F16 => 2,
        HiddenType.F32 => 4,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown hidden-state type"),
    };

    public static bool IsKnown(HiddenType type) => type is HiddenType.F16 or HiddenType.F32;

    /// <summary>Writes <paramref name="values"/> as <paramref name="type"/>; returns bytes written.</summary>
    public static int Encode(ReadOnlySpan<float> values, HiddenType type, Span<byte> destination)
    {
        var bytes = values.Length * BytesPerElement(type);
        if (destination.Length < bytes) throw new ArgumentException("destination too small", nameof(destination));
        if (type == HiddenType.F32)
            MemoryMarshal.AsBytes(values).CopyTo(destination);
        else
            TensorPrimitives.ConvertToHalf(values, MemoryMarshal.Cast<byte, Half>(destination[..bytes]));
        return bytes;
    }

    /// <summary>
    /// Reads <paramref name="payload"/> into <paramref name="destination"/> and reports whether every value
    /// is finite. The payload length must be exactly destination.Length elements of <paramref name="type"/>.
    /// An empty payload (a 0-row rewind step) decodes to nothing and counts as finite.
    /// </summary>
    public static bool TryDecode(ReadOnlySpan<byte> payload, HiddenType type, Span<float> destination, out bool allFinite)
    {
        allFinite = false;
        if (!IsKnown(type) || payload.Length != destination.Length * BytesPerElement(type)) return false;
        if (type == HiddenType.F32)
            payload.CopyTo(MemoryMarshal.AsBytes(destination));
        else
            TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(payload), destination);
        allFinite = AllFinite(destination);
        return true;
    }

    // IsFiniteAll answers false for an empty span; no values means none is NaN or infinite.
    public static bool AllFinite(ReadOnlySpan<float> values) => values.IsEmpty || TensorPrimitives.IsFiniteAll(values);
}
