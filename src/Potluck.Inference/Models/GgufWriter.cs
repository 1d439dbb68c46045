using System.Buffers;
using System.Runtime.InteropServices;
using System.Text;

namespace Potluck.Inference.Models;

/// <summary>
/// Writes GGUF v3 files with F32 tensors: header, metadata, tensor index, then aligned tensor data.
/// Tensor data is produced by a callback at write time so a large model never sits in memory whole.
/// </summary>
public sealed class GgufWriter
{
    /// <summary>Alignment of tensor data, written as general.alignment; 32 is the GGUF default.</summary>
    public const int Alignment = 32;

    private const uint Magic = 0x46554747; // "GGUF" read as a little-endian uint32
    private const uint Version = 3;

    private enum ValueType : uint
    {
        UInt32 = 4,
        Int32 = 5,
        Float32 = 6,
        Bool = 7,
        String = 8,
        Array = 9,
    }

    private readonly List<(string Key, ValueType Type, object Value)> _metadata = [];
    private readonly List<PendingTensor> _tensors = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);

    /// <summary>Fills a tensor's data; the span holds the product of its dimensions, in ggml order.</summary>
    public delegate void TensorFiller(Span<float> data);

    private sealed record PendingTensor(string Name, long[] Shape, TensorFiller Fill)
    {
        public long ElementCount { get; } = Shape.Aggregate(1L, (a, b) => a * b);
    }

    public GgufWriter()
    {
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("GGUF files are little-endian; this writer only runs on little-endian machines.");
        Add("general.alignment", (uint)Alignment);
    }

    public int TensorCount => _tensors.Count;

    public GgufWriter Add(string key, uint value) => AddValue(key, ValueType.UInt32, value);
    public GgufWriter Add(string key, int value) => AddValue(key, ValueType.Int32, value);
    public GgufWriter Add(string key, float value) => AddValue(key, ValueType.Float32, value);
    public GgufWriter Add(string key, bool value) => AddValue(key, ValueType.Bool, value);
    public GgufWriter Add(string key, string value) => AddValue(key, ValueType.String, value);
    public GgufWriter Add(string key, string[] values) => AddValue(key, ValueType.Array, values);
    public GgufWriter Add(string key, float[] values) => AddValue(key, ValueType.Array, values);
    public GgufWriter Add(string key, int[] values) => AddValue(key, ValueType.Array, values);

    /// <summary>Adds an F32 tensor. <paramref name="shape"/> is in ggml order: ne[0] (the contiguous row length) first.</summary>
    public GgufWriter AddTensor(string name, long[] shape, TensorFiller fill)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (shape.Length is < 1 or > 4) throw new ArgumentException($"tensor '{name}' has {shape.Length} dimensions; GGUF allows 1 to 4", nameof(shape));
        if (shape.Any(d => d <= 0)) throw new ArgumentException($"tensor '{name}' has a non-positive dimension", nameof(shape));
        if (!_names.Add(name)) throw new ArgumentException($"tensor '{name}' added twice", nameof(name));
        _tensors.Add(new PendingTensor(name, (long[])shape.Clone(), fill));
        return this;
    }

    private GgufWriter AddValue(string key, ValueType type, object value)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        var existing = _metadata.FindIndex(m => m.Key == key);
        if (existing >= 0) _metadata[existing] = (key, type, value);
        else _metadata.Add((key, type, value));
        return this;
    }

    /// <summary>Writes the whole file to <paramref name="path"/> (created or overwritten).</summary>
    public void WriteTo(string path, IProgress<double>? progress = null)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        WriteTo(stream, progress);
        stream.Flush(flushToDisk: true);
    }

    public void WriteTo(Stream stream, IProgress<double>? progress = null)
    {
        // Alignment padding is computed from the stream position.
        if (!stream.CanSeek) throw new ArgumentException("GGUF writing needs a seekable stream", nameof(stream));
        using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        writer.Write(Magic);
        writer.Write(Version);
        writer.Write((ulong)_tensors.Count);
        writer.Write((ulong)_metadata.Count);

        foreach (var (key, type, value) in _metadata)
        {
            WriteString(writer, key);
            writer.Write((uint)type);
            WriteValue(writer, type, value);
        }

        // Offsets are relative to the start of the data section, each aligned.
        long offset = 0;
        foreach (var tensor in _tensors)
        {
            WriteString(writer, tensor.Name);
            writer.Write((uint)tensor.Shape.Length);
            foreach (var dim in tensor.Shape) writer.Write((ulong)dim);
            writer.Write(0u); // GGML_TYPE_F32
            writer.Write((ulong)offset);
            offset = AlignUp(offset + tensor.ElementCount * sizeof(float));
        }

        writer.Flush();
        Pad(stream);
        var totalElements = _tensors.Sum(t => t.ElementCount);
        long written = 0;
        foreach (var tensor in _tensors)
        {
            WriteTensorData(stream, tensor);
            Pad(stream);
            written += tensor.ElementCount;
            progress?.Report(totalElements == 0 ? 1.0 : (double)written / totalElements);
        }
    }

    private static void WriteTensorData(Stream stream, PendingTensor tensor)
    {
        if (tensor.ElementCount > Array.MaxLength)
            throw new NotSupportedException($"tensor '{tensor.Name}' has {tensor.ElementCount} elements; the writer fills one tensor at a time in a managed buffer");
        var count = (int)tensor.ElementCount;
        var buffer = ArrayPool<float>.Shared.Rent(count);
        try
        {
            var data = buffer.AsSpan(0, count);
            data.Clear();
            tensor.Fill(data);
            stream.Write(MemoryMarshal.AsBytes(data));
        }
        finally
        {
            ArrayPool<float>.Shared.Return(buffer);
        }
    }

    private static void WriteValue(BinaryWriter writer, ValueType type, object value)
    {
        switch (value)
        {
            case uint u: writer.Write(u); break;
            case int i: writer.Write(i); break;
            case float f: writer.Write(f); break;
            case bool b: writer.Write((byte)(b ? 1 : 0)); break;
            case string s: WriteString(writer, s); break;
            case string[] strings:
                writer.Write((uint)ValueType.String);
                writer.Write((ulong)strings.Length);
                foreach (var s in strings) WriteString(writer, s);
                break;
            case float[] floats:
                writer.Write((uint)ValueType.Float32);
                writer.Write((ulong)floats.Length);
                foreach (var f in floats) writer.Write(f);
                break;
            case int[] ints:
                writer.Write((uint)ValueType.Int32);
                writer.Write((ulong)ints.Length);
                foreach (var i in ints) writer.Write(i);
                break;
            default:
                throw new InvalidOperationException($"no GGUF encoding for {value.GetType()} as {type}");
        }
    }

    private static void WriteString(BinaryWriter writer, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        writer.Write((ulong)bytes.Length);
        writer.Write(bytes);
    }

    private static long AlignUp(long value) => (value + Alignment - 1) / Alignment * Alignment;

    private static void Pad(Stream stream)
    {
        var padding = (int)(AlignUp(stream.Position) - stream.Position);
        Span<byte> zeros = stackalloc byte[Alignment];
        zeros.Clear();
        stream.Write(zeros[..padding]);
    }
}
