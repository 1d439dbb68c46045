using System.Buffers.Binary;
using System.Text;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;

namespace Potluck.Inference.Tests;

/// <summary>
/// Hostile GGUF headers: offsets and counts near 2^63 and 2^64, huge arrays and shapes, truncation at every cut.
/// Each gives a <see cref="GgufFormatException"/>; the load-path tests go through GgufModel and LayerSpan, so a
/// wrapped bounds check would reach ggml's memcpy and kill the test run instead of failing one test.
/// </summary>
public sealed class HostileGgufTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("potluck-hostile-gguf-").FullName;
    private static string Good => TestModels.Get(OracleTests.Spec("llama"), GgmlType.Q8_0);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(byte[] bytes, string name)
    {
        var path = Path.Combine(_dir, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private GgufFormatException Refused(byte[] bytes, string name)
    {
        var path = Write(bytes, name);
        return Assert.Throws<GgufFormatException>(() => GgufFile.Read(path));
    }

    /// <summary>The Good model with one tensor's data offset replaced (the real file, a real load path).</summary>
    private static byte[] WithTensorOffset(string tensor, ulong offset)
    {
        var bytes = File.ReadAllBytes(Good);
        var name = Encoding.ASCII.GetBytes(tensor);
        var at = bytes.AsSpan().IndexOf(name);
        Assert.True(at > 8);
        Assert.Equal((ulong)name.Length, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at - 8)));
        var p = at + name.Length;
        var dims = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(p));
        p += 4 + 8 * (int)dims + 4;
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(p), offset);
        return bytes;
    }

    [Theory]
    [InlineData(0x7FFF_FFFF_FFFF_FFE0UL)] // just below 2^63: offset + bytes wraps a signed sum
    [InlineData(0x8000_0000_0000_0000UL)] // 2^63: negative as a long
    [InlineData(0xFFFF_FFFF_FFFF_FFE0UL)] // 2^64 - 32: -32 as a long, i.e. before the mapping
    [InlineData(0x0000_0001_0000_0000UL)] // 4 GiB: past a small file, no wrap
    public void TensorOffsetsPastTheFileAreRefusedOnTheRealLoadPath(ulong offset)
    {
        foreach (var tensor in new[] { "blk.0.attn_q.weight", "token_embd.weight", "output_norm.weight" })
        {
            var path = Write(WithTensorOffset(tensor, offset), $"offset-{offset:x}-{tensor}.gguf");
            var e = Assert.Throws<GgufFormatException>(() =>
            {
                using var model = GgufModel.Open(path);
                using var span = new LayerSpan(model, 0, model.Info.LayerCount, new SpanOptions { Threads = 1 });
                using var head = new ModelHead(model, 1);
            });
            Assert.Contains(tensor, e.Message);
            Assert.Contains("past the end of the file", e.Message);
        }
    }

    [Theory]
    [InlineData(0x7FFF_FFFF_FFFF_FFFFUL)]
    [InlineData(0x8000_0000_0000_0000UL)]
    [InlineData(0xFFFF_FFFF_FFFF_FFFFUL)]
    [InlineData(0x0000_0000_FFFF_FFFFUL)]
    public void HugeHeaderCountsAreRefused(ulong count)
    {
        Assert.Contains("tensor count", Refused(new RawGguf { TensorCount = count }.Build(), $"tensors-{count:x}.gguf").Message);
        Assert.Contains("metadata count", Refused(new RawGguf { KvCount = count }.Build(), $"kvs-{count:x}.gguf").Message);
    }

    [Theory]
    [InlineData(0u, 0x7FFF_FFFF_FFFF_FFFFUL)]
    [InlineData(0u, 0x2000_0000_0000_0000UL)] // times 8 wraps to 0 in 64 bits
    [InlineData(4u, 0x4000_0000_0000_0000UL)] // uint32: times 4 wraps to 0
    [InlineData(5u, 0xFFFF_FFFF_FFFF_FFFFUL)]
    [InlineData(6u, 0x8000_0000_0000_0000UL)]
    [InlineData(7u, 0x7FFF_FFFF_FFFF_FFFFUL)]
    [InlineData(8u, 0x2000_0000_0000_0000UL)]
    [InlineData(8u, 1000UL)] // 1000 strings need at least 8000 bytes of length prefixes
    [InlineData(10u, 0x2000_0000_0000_0001UL)]
    [InlineData(12u, 0xFFFF_FFFF_FFFF_FFF0UL)]
    public void HugeArrayCountsAreRefusedBeforeAllocating(uint itemType, ulong count)
    {
        var raw = new RawGguf();
        raw.Key("huge").U32(9).U32(itemType).U64(count).Bytes(new byte[64]);
        var before = GC.GetAllocatedBytesForCurrentThread();
        var e = Refused(raw.Build(), $"array-{itemType}-{count:x}.gguf");
        Assert.Contains("'huge' array length", e.Message);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 4 << 20, "the parser allocated for a count the file cannot hold");
    }

    [Theory]
    [InlineData(0x7FFF_FFFF_FFFF_FFFFUL)]
    [InlineData(0xFFFF_FFFF_FFFF_FFFFUL)]
    [InlineData(0x0000_0000_8000_0000UL)]
    [InlineData(4096UL)] // plausible, but more than the file holds
    public void HugeStringLengthsAreRefused(ulong length)
    {
        var key = new RawGguf();
        key.U64(length).Bytes(new byte[32]);
        Assert.Contains("too long", Refused(key.Build(), $"key-{length:x}.gguf").Message);

        var value = new RawGguf();
        value.Key("general.name").U32(8).U64(length).Bytes(new byte[32]);
        Assert.Contains("too long", Refused(value.Build(), $"value-{length:x}.gguf").Message);

        var tensorName = new RawGguf { TensorCount = 1, KvCount = 0 };
        tensorName.U64(length).Bytes(new byte[32]);
        Assert.Contains("too long", Refused(tensorName.Build(), $"tensor-{length:x}.gguf").Message);
    }

    [Theory]
    [InlineData(new ulong[] { 0x7FFF_FFFF, 0x7FFF_FFFF, 0x7FFF_FFFF, 0x7FFF_FFFF })] // 2^124 elements
    [InlineData(new ulong[] { 0x7FFF_FFFF, 0x7FFF_FFFF, 0x7FFF_FFFF })] // 2^93
    [InlineData(new ulong[] { 0x8000_0000_0000_0000 })] // one dimension of 2^63
    [InlineData(new ulong[] { 0xFFFF_FFFF_FFFF_FFFF, 1 })]
    [InlineData(new ulong[] { 0 })]
    public void HugeOrEmptyShapesAreRefused(ulong[] shape)
    {
        var raw = new RawGguf { TensorCount = 1, KvCount = 0 };
        raw.Str("t").U32((uint)shape.Length);
        foreach (var ne in shape) raw.U64(ne);
        raw.U32(0).U64(0).Bytes(new byte[64]);
        var e = Refused(raw.Build(), $"shape-{string.Join("x", shape)}.gguf");
        Assert.Contains("tensor 't'", e.Message);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(5u)]
    [InlineData(0xFFFF_FFFFu)]
    public void BadDimensionCountsAreRefused(uint dims)
    {
        var raw = new RawGguf { TensorCount = 1, KvCount = 0 };
        raw.Str("t").U32(dims).Bytes(new byte[64]);
        Assert.Contains("dimensions", Refused(raw.Build(), $"dims-{dims}.gguf").Message);
    }

    [Fact]
    public void UnknownTypesAndNestedArraysAreRefused()
    {
        var value = new RawGguf();
        value.Key("k").U32(13).Bytes(new byte[16]);
        Assert.Contains("unknown value type", Refused(value.Build(), "value-type.gguf").Message);

        var item = new RawGguf();
        item.Key("k").U32(9).U32(77).U64(1).Bytes(new byte[16]);
        Assert.Contains("unknown type 77", Refused(item.Build(), "item-type.gguf").Message);

        var nested = new RawGguf();
        nested.Key("k").U32(9).U32(9).U64(1).Bytes(new byte[16]);
        Assert.Contains("nested array", Refused(nested.Build(), "nested.gguf").Message);

        var tensorType = new RawGguf { TensorCount = 1, KvCount = 0 };
        tensorType.Str("t").U32(1).U64(32).U32(4).U64(0).Bytes(new byte[256]); // 4 and 5 are removed ggml types
        Assert.Contains("unknown ggml type 4", Refused(tensorType.Build(), "tensor-type.gguf").Message);
    }

    [Fact]
    public void TruncationAtEveryCutInTheHeaderIsAFormatError()
    {
        var bytes = File.ReadAllBytes(Good);
        var headerEnd = (int)GgufFile.Read(Good).DataOffset;
        var path = Path.Combine(_dir, "cut.gguf");
        // Every byte of the header (metadata, vocabulary, tensor index), then cuts spread over the tensor data.
        var cuts = Enumerable.Range(0, headerEnd)
            .Concat(Enumerable.Range(1, 64).Select(i => headerEnd + (int)((long)(bytes.Length - headerEnd) * i / 65)));
        foreach (var cut in cuts)
        {
            File.WriteAllBytes(path, bytes[..cut]);
            var e = Assert.Throws<GgufFormatException>(() => GgufFile.Read(path));
            Assert.Contains(path, e.Message);
        }
        // A few through the whole load path, including cuts inside the tensor data.
        foreach (var cut in new[] { 24, headerEnd / 2, headerEnd - 1, headerEnd + 1, bytes.Length - 33, bytes.Length - 1 })
        {
            File.WriteAllBytes(path, bytes[..cut]);
            Assert.Throws<GgufFormatException>(() =>
            {
                using var model = GgufModel.Open(path);
                using var span = new LayerSpan(model, 0, model.Info.LayerCount, new SpanOptions { Threads = 1 });
            });
        }
    }

    [Fact]
    public void OutOfRangeHyperParametersAreRefusedNotTruncated()
    {
        // As a uint64 of 2^32 + 256, llama.embedding_length would truncate to a plausible 256.
        var path = Path.Combine(_dir, "hparam.gguf");
        var raw = new RawGguf { KvCount = 2 };
        raw.Key("general.architecture").U32(8).Str("llama");
        raw.Key("llama.embedding_length").U32(10).U64((1UL << 32) + 256);
        File.WriteAllBytes(path, raw.Build());
        var e = Assert.Throws<GgufFormatException>(() => GgufModel.Inspect(path));
        Assert.Contains("llama.embedding_length", e.Message);
        Assert.Contains("out of range", e.Message);

        var huge = new RawGguf { KvCount = 2 };
        huge.Key("general.architecture").U32(8).Str("llama");
        huge.Key("llama.block_count").U32(10).U64(0xFFFF_FFFF_FFFF_FFFF);
        File.WriteAllBytes(path, huge.Build());
        Assert.Contains("out of range", Assert.Throws<GgufFormatException>(() => GgufModel.Inspect(path)).Message);
    }

    [Fact]
    public void MetadataArraysAreTypedNotBoxed()
    {
        const int n = 1 << 20;
        var raw = new RawGguf { KvCount = 4 };
        raw.Key("bytes").U32(9).U32(0).U64(n).Bytes(Enumerable.Range(0, n).Select(i => (byte)i).ToArray());
        raw.Key("shorts").U32(9).U32(3).U64(3).Bytes([1, 0, 0xFF, 0xFF, 7, 0]);
        raw.Key("bools").U32(9).U32(7).U64(2).Bytes([1, 0]);
        raw.Key("doubles").U32(9).U32(12).U64(1).F64(2.5);
        var path = Write(raw.Build(), "typed.gguf");
        var before = GC.GetAllocatedBytesForCurrentThread();
        var file = GgufFile.Read(path);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        var bytes = Assert.IsType<byte[]>(file.Metadata["bytes"]);
        Assert.Equal(n, bytes.Length);
        Assert.Equal(255, bytes[255]);
        Assert.Equal(0, bytes[256]);
        Assert.Equal(new short[] { 1, -1, 7 }, Assert.IsType<short[]>(file.Metadata["shorts"]));
        Assert.Equal(new[] { true, false }, Assert.IsType<bool[]>(file.Metadata["bools"]));
        Assert.Equal(new[] { 2.5 }, Assert.IsType<double[]>(file.Metadata["doubles"]));
        // Boxed, a 1 MiB byte array would cost over 24 MiB (a reference plus a 24-byte box per byte).
        Assert.True(allocated < 4 * n, $"reading a 1 MiB byte array allocated {allocated} bytes");

        var model = GgufFile.Read(Good);
        Assert.IsType<string[]>(model.Metadata["tokenizer.ggml.tokens"]);
        Assert.IsType<float[]>(model.Metadata["tokenizer.ggml.scores"]);
        Assert.IsType<int[]>(model.Metadata["tokenizer.ggml.token_type"]);
    }

    [Fact]
    public void RandomTensorOffsetsNeverCrashTheLoadPath()
    {
        // The real model with one tensor moved: to a dangerous value, or anywhere up to twice the file's length.
        ulong[] dangerous = [0x7FFF_FFFF_FFFF_FFE0, 0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFE0, 0x0000_0000_FFFF_FFE0, 0x0000_0000_7FFF_FFE0];
        var length = (ulong)new FileInfo(Good).Length;
        var names = GgufFile.Read(Good).Tensors.Select(t => t.Name).ToArray();
        var rng = new Random(12);
        var path = Path.Combine(_dir, "moved.gguf");
        var loaded = 0;
        for (var trial = 0; trial < 40; trial++)
        {
            var offset = rng.Next(3) == 0 ? dangerous[rng.Next(dangerous.Length)] : (ulong)rng.NextInt64(0, (long)(2 * length)) & ~31UL;
            File.WriteAllBytes(path, WithTensorOffset(names[rng.Next(names.Length)], offset));
            try
            {
                using var model = GgufModel.Open(path);
                using var span = new LayerSpan(model, 0, model.Info.LayerCount, new SpanOptions { Threads = 1 });
                using var head = new ModelHead(model, 1);
                loaded++;
            }
            catch (GgufFormatException e)
            {
                Assert.Contains("past the end of the file", e.Message);
            }
        }
        Assert.InRange(loaded, 1, 39); // offsets inside the file load (other bytes), the rest are refused
    }

    /// <summary>A GGUF v3 byte builder that writes whatever it is told, valid or not.</summary>
    private sealed class RawGguf
    {
        private readonly MemoryStream _body = new();
        public ulong TensorCount { get; init; }
        public ulong KvCount { get; init; } = 1;

        public RawGguf U32(uint v)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, v);
            _body.Write(b);
            return this;
        }

        public RawGguf U64(ulong v)
        {
            Span<byte> b = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(b, v);
            _body.Write(b);
            return this;
        }

        public RawGguf F64(double v) => U64((ulong)BitConverter.DoubleToInt64Bits(v));

        public RawGguf Bytes(byte[] bytes)
        {
            _body.Write(bytes);
            return this;
        }

        public RawGguf Str(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            return U64((ulong)bytes.Length).Bytes(bytes);
        }

        public RawGguf Key(string key) => Str(key);

        public byte[] Build()
        {
            var header = new byte[24];
            BinaryPrimitives.WriteUInt32LittleEndian(header, 0x46554747);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), 3);
            BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(8), TensorCount);
            BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(16), KvCount);
            return [.. header, .. _body.ToArray()];
        }
    }
}
