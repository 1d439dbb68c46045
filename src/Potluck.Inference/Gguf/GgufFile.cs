using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Potluck.Inference.Gguf;

/// <summary>
/// The parsed header of a GGUF file: metadata, tensor index and data offset. Parsed in managed code with
/// bounds checks on every length, so a truncated or hostile file yields a <see cref="GgufFormatException"/>
/// instead of reaching native code.
/// </summary>
public sealed class GgufFile
{
    private const uint Magic = 0x46554747; // "GGUF" little-endian
    private const int MaxKeyLength = 1 << 16;
    private const int MaxDims = 4; // GGML_MAX_DIMS
    // A string value (chat template, token text) past this is hostile, and would not fit a .NET string anyway.
    private const int MaxValueStringLength = 64 << 20;

    public required string Path { get; init; }
    public required uint Version { get; init; }
    public required IReadOnlyDictionary<string, object> Metadata { get; init; }
    public required IReadOnlyList<TensorInfo> Tensors { get; init; }
    public required long DataOffset { get; init; }
    public required long FileLength { get; init; }
    /// <summary>SHA-256 (hex) of every byte before the tensor data: magic, metadata and tensor index.</summary>
    public required string HeaderHash { get; init; }

    public T? Get<T>(string key) where T : class => Metadata.TryGetValue(key, out var v) ? v as T : null;

    /// <summary>A numeric metadata value converted to long, or null when absent or not numeric.</summary>
    /// <exception cref="GgufFormatException">A uint64 value above long.MaxValue (it would wrap negative).</exception>
    public long? GetInteger(string key) => Metadata.TryGetValue(key, out var v) ? v switch
    {
        byte b => b, sbyte sb => sb, ushort us => us, short s => s, uint ui => ui, int i => i,
        ulong ul => ul <= long.MaxValue ? (long)ul : throw new GgufFormatException(Path, $"metadata '{key}' = {ul} is out of range"),
        long l => l, bool bo => bo ? 1 : 0,
        _ => null,
    } : null;

    public double? GetFloat(string key) => Metadata.TryGetValue(key, out var v) ? v switch
    {
        float f => f, double d => d,
        _ => GetInteger(key),
    } : null;

    public static GgufFile Read(string path)
    {
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (FileNotFoundException)
        {
            throw new GgufFormatException(path, "file not found");
        }
        catch (DirectoryNotFoundException)
        {
            throw new GgufFormatException(path, "file not found");
        }
        catch (UnauthorizedAccessException e)
        {
            throw new GgufFormatException(path, "permission denied", e);
        }
        using (stream)
        {
            try
            {
                return Parse(path, stream);
            }
            catch (EndOfStreamException e)
            {
                throw new GgufFormatException(path, "file ends inside the header (truncated?)", e);
            }
        }
    }

    private static GgufFile Parse(string path, FileStream stream)
    {
        var length = stream.Length;
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var reader = new HeaderReader(stream, sha, path, length);

        if (length < 24) throw new GgufFormatException(path, $"file is only {length} bytes");
        if (reader.U32() != Magic) throw new GgufFormatException(path, "bad magic (not a GGUF file)");
        var version = reader.U32();
        if (version is < 2 or > 3) throw new GgufFormatException(path, $"unsupported GGUF version {version} (expected 2 or 3)");
        var tensorCount = reader.Count("tensor count");
        var kvCount = reader.Count("metadata count");

        var metadata = new Dictionary<string, object>(StringComparer.Ordinal);
        for (long i = 0; i < kvCount; i++)
        {
            var key = reader.String(MaxKeyLength);
            var type = reader.U32();
            if (!metadata.TryAdd(key, reader.Value(type, key)))
                throw new GgufFormatException(path, $"duplicate metadata key '{key}'");
        }

        var alignment = metadata.TryGetValue("general.alignment", out var a) && a is uint al ? al : 32u;
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
            throw new GgufFormatException(path, $"general.alignment {alignment} is not a power of two");

        var raw = new List<(string Name, GgmlType Type, long[] Shape, ulong Offset)>((int)Math.Min(tensorCount, 1 << 16));
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (long i = 0; i < tensorCount; i++)
        {
            var name = reader.String(MaxKeyLength);
            var dims = reader.U32();
            if (dims is 0 or > MaxDims) throw new GgufFormatException(path, $"tensor '{name}' has {dims} dimensions");
            var shape = new long[dims];
            for (var d = 0; d < dims; d++)
            {
                var ne = reader.U64();
                if (ne == 0 || ne > int.MaxValue) throw new GgufFormatException(path, $"tensor '{name}' has dimension {d} of size {ne}");
                shape[d] = (long)ne;
            }
            var typeId = reader.U32();
            if (!Enum.IsDefined(typeof(GgmlType), (int)typeId))
                throw new GgufFormatException(path, $"tensor '{name}' has unknown ggml type {typeId}");
            var offset = reader.U64();
            if (offset % alignment != 0) throw new GgufFormatException(path, $"tensor '{name}' offset {offset} is not aligned to {alignment}");
            if (!names.Add(name)) throw new GgufFormatException(path, $"duplicate tensor '{name}'");
            raw.Add((name, (GgmlType)typeId, shape, offset));
        }

        // Unsigned throughout: a hostile offset near 2^64 must not wrap to a small or negative position.
        var dataOffset = ((ulong)reader.Position + alignment - 1) / alignment * alignment;
        var dataLength = (ulong)length > dataOffset ? (ulong)length - dataOffset : 0UL;
        var tensors = new List<TensorInfo>(raw.Count);
        foreach (var (name, type, shape, offset) in raw)
        {
            var bytes = TensorBytes(type, shape, path, name);
            if (offset > dataLength || (ulong)bytes > dataLength - offset)
                throw new GgufFormatException(path,
                    $"tensor '{name}' at data offset {offset} with {bytes} bytes ends past the end of the file ({length} bytes, data from byte {dataOffset}; truncated?)");
            tensors.Add(new TensorInfo(name, type, shape, (long)(dataOffset + offset), bytes));
        }
        if (dataOffset > (ulong)length && tensors.Count > 0)
            throw new GgufFormatException(path, $"tensor data would start at byte {dataOffset} but the file has {length} (truncated?)");

        return new GgufFile
        {
            Path = path,
            Version = version,
            Metadata = metadata,
            Tensors = tensors,
            DataOffset = (long)Math.Min(dataOffset, (ulong)length),
            FileLength = length,
            HeaderHash = Convert.ToHexStringLower(sha.GetHashAndReset()),
        };
    }

    /// <summary>
    /// Bytes of a tensor, from the block size and block bytes of its type. Element count and bytes must both fit
    /// in an int64 (ggml computes them so); an overflow is a format error, never a wrapped size.
    /// </summary>
    internal static long TensorBytes(GgmlType type, long[] shape, string path, string name)
    {
        var (block, blockBytes) = TypeLayout(type);
        if (shape[0] % block != 0)
            throw new GgufFormatException(path, $"tensor '{name}' row length {shape[0]} is not a multiple of the {type} block size {block}");
        UInt128 elements = 1;
        UInt128 bytes = (UInt128)(ulong)(shape[0] / block) * (ulong)blockBytes;
        foreach (var ne in shape) elements *= (ulong)ne;
        for (var d = 1; d < shape.Length; d++) bytes *= (ulong)shape[d];
        // Each factor is below 2^31 and there are at most 4, so UInt128 cannot wrap; compare before narrowing.
        if (elements > long.MaxValue || bytes > long.MaxValue)
            throw new GgufFormatException(path, $"tensor '{name}' shape [{string.Join(", ", shape)}] is too large");
        return (long)bytes;
    }

    /// <summary>Block size and bytes per block, as ggml's type traits define them.</summary>
    public static (int Block, int Bytes) TypeLayout(GgmlType type) => type switch
    {
        GgmlType.F32 => (1, 4), GgmlType.F16 => (1, 2), GgmlType.BF16 => (1, 2),
        GgmlType.Q4_0 => (32, 18), GgmlType.Q4_1 => (32, 20), GgmlType.Q5_0 => (32, 22), GgmlType.Q5_1 => (32, 24),
        GgmlType.Q8_0 => (32, 34), GgmlType.Q8_1 => (32, 36),
        GgmlType.Q2_K => (256, 84), GgmlType.Q3_K => (256, 110), GgmlType.Q4_K => (256, 144),
        GgmlType.Q5_K => (256, 176), GgmlType.Q6_K => (256, 210), GgmlType.Q8_K => (256, 292),
        GgmlType.IQ2_XXS => (256, 66), GgmlType.IQ2_XS => (256, 74), GgmlType.IQ3_XXS => (256, 98),
        GgmlType.IQ1_S => (256, 50), GgmlType.IQ4_NL => (32, 18), GgmlType.IQ3_S => (256, 110),
        GgmlType.IQ2_S => (256, 82), GgmlType.IQ4_XS => (256, 136), GgmlType.IQ1_M => (256, 56),
        GgmlType.I8 => (1, 1), GgmlType.I16 => (1, 2), GgmlType.I32 => (1, 4), GgmlType.I64 => (1, 8), GgmlType.F64 => (1, 8),
        GgmlType.TQ1_0 => (256, 54), GgmlType.TQ2_0 => (256, 66), GgmlType.MXFP4 => (32, 17),
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown ggml type"),
    };

    /// <summary>Reads header fields while hashing every byte it consumes.</summary>
    private sealed class HeaderReader(Stream stream, IncrementalHash hash, string path, long length)
    {
        private readonly byte[] _scratch = new byte[8];
        public long Position { get; private set; }

        private long Remaining => length - Position;

        private ReadOnlySpan<byte> Take(int count)
        {
            var buffer = count <= 8 ? _scratch : new byte[count];
            Fill(buffer.AsSpan(0, count));
            return buffer.AsSpan(0, count);
        }

        private void Fill(Span<byte> destination)
        {
            stream.ReadExactly(destination);
            hash.AppendData(destination);
            Position += destination.Length;
        }

        public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
        public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));

        /// <summary>A count whose items (each at least <paramref name="minItemBytes"/>) must fit in the bytes left in the file.</summary>
        public long Count(string what, int minItemBytes = 1)
        {
            var n = U64();
            // Divide instead of multiplying: n * size could wrap for n near 2^64.
            if (n > (ulong)Remaining / (ulong)minItemBytes) throw new GgufFormatException(path, $"{what} {n} exceeds the file size");
            return (long)n;
        }

        public string String(int maxLength)
        {
            var at = Position;
            var n = U64();
            if (n > (ulong)maxLength || n > (ulong)Remaining)
                throw new GgufFormatException(path, $"string of length {n} at byte {at} is too long for the file");
            return Encoding.UTF8.GetString(Take((int)n));
        }

        public object Value(uint type, string key) => type switch
        {
            0 => Take(1)[0],
            1 => (sbyte)Take(1)[0],
            2 => BinaryPrimitives.ReadUInt16LittleEndian(Take(2)),
            3 => BinaryPrimitives.ReadInt16LittleEndian(Take(2)),
            4 => U32(),
            5 => (int)U32(),
            6 => BinaryPrimitives.ReadSingleLittleEndian(Take(4)),
            7 => Take(1)[0] != 0,
            8 => String(MaxValueStringLength),
            9 => Array(key),
            10 => U64(),
            11 => (long)U64(),
            12 => BinaryPrimitives.ReadDoubleLittleEndian(Take(8)),
            _ => throw new GgufFormatException(path, $"metadata '{key}' has unknown value type {type}"),
        };

        /// <summary>
        /// An array as a typed array of its element type (byte[], int[], float[], string[], ...), never object[]:
        /// a boxed element costs 24+ bytes where the file spends one. Its length is checked against the file first.
        /// </summary>
        private object Array(string key)
        {
            var itemType = U32();
            if (itemType == 9) throw new GgufFormatException(path, $"metadata '{key}' is a nested array");
            var what = $"metadata '{key}' array length";
            return itemType switch
            {
                0 => Numbers<byte>(Count(what, 1)),
                1 => Numbers<sbyte>(Count(what, 1)),
                2 => Numbers<ushort>(Count(what, 2)),
                3 => Numbers<short>(Count(what, 2)),
                4 => Numbers<uint>(Count(what, 4)),
                5 => Numbers<int>(Count(what, 4)),
                6 => Numbers<float>(Count(what, 4)),
                7 => Bools(Count(what, 1)),
                8 => Strings(Count(what, 8)),
                10 => Numbers<ulong>(Count(what, 8)),
                11 => Numbers<long>(Count(what, 8)),
                12 => Numbers<double>(Count(what, 8)),
                _ => throw new GgufFormatException(path, $"metadata '{key}' is an array of unknown type {itemType}"),
            };

            T[] Numbers<T>(long n) where T : unmanaged
            {
                if (n > System.Array.MaxLength) throw new GgufFormatException(path, $"metadata '{key}' array of {n} items is too large");
                var items = new T[n];
                Fill(MemoryMarshal.AsBytes(items.AsSpan()));
                if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("GGUF is read on little-endian hosts only");
                return items;
            }

            bool[] Bools(long n)
            {
                var raw = Numbers<byte>(n);
                var items = new bool[raw.Length];
                for (var i = 0; i < raw.Length; i++) items[i] = raw[i] != 0;
                return items;
            }

            string[] Strings(long n)
            {
                if (n > System.Array.MaxLength) throw new GgufFormatException(path, $"metadata '{key}' array of {n} items is too large");
                var items = new string[n];
                for (long i = 0; i < n; i++) items[i] = String(MaxValueStringLength);
                return items;
            }
        }
    }
}
