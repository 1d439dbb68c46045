using System.Diagnostics;
using System.Text;
using LLama;
using LLama.Common;
using LLama.Native;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;
using Potluck.Inference.Native;

namespace Potluck.Inference.Tests;

public sealed class GeneratorTests
{
    private static readonly GgmlType[] VerifiedTypes = [GgmlType.F32, GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K];

    public static TheoryData<string, GgmlType> ArchitecturesAndTypes()
    {
        var data = new TheoryData<string, GgmlType>();
        foreach (var arch in TestModelSpec.Architectures)
            foreach (var type in VerifiedTypes)
                data.Add(arch, type);
        return data;
    }

    [Theory]
    [MemberData(nameof(ArchitecturesAndTypes))]
    public void LlamaCppLoadsEveryFamilyAndTypeAndDecodesVariedText(string architecture, GgmlType type)
    {
        var spec = TestModelSpec.ForArchitecture(architecture);
        var path = TestModels.Get(spec, type);

        NativeRuntime.EnsureLoaded();
        var parameters = new ModelParams(path) { ContextSize = 64, Threads = 2, BatchThreads = 2 };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        var model = weights.NativeHandle;
        Assert.Equal(spec.LayerCount, model.LayerCount);
        Assert.Equal(spec.EmbeddingLength, model.EmbeddingSize);
        Assert.Equal(spec.HeadCount, model.HeadCount);
        Assert.Equal(spec.KvHeadCount, model.KVHeadCount);
        Assert.Equal(TestModelGenerator.Vocab.Size, weights.Vocab.Count);

        var generated = GreedyDecode(weights, parameters, "Once upon a time", 16);
        Assert.True(generated.Distinct().Count() > 1, $"greedy output is one repeated token: {string.Join(",", generated)}");
    }

    [Fact]
    public void KQuantFilesHoldKQuantTensorsWhenRowsAre256Aligned()
    {
        var spec = new TestModelSpec { EmbeddingLength = 256, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 512, LayerCount = 2 };
        var q4k = GgufHeader.Read(TestModels.Get(spec, GgmlType.Q4_K));
        Assert.Equal(GgmlType.Q4_K, q4k.Tensors["blk.0.attn_q.weight"].Type);
        Assert.Equal(GgmlType.F32, q4k.Tensors["blk.0.attn_norm.weight"].Type); // 1-D tensors stay F32
        var q6k = GgufHeader.Read(TestModels.Get(spec, GgmlType.Q6_K));
        Assert.Equal(GgmlType.Q6_K, q6k.Tensors["blk.1.ffn_down.weight"].Type);
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    public void WritesTheTensorsAndKeysLlamaCppExpects(string architecture)
    {
        var spec = TestModelSpec.ForArchitecture(architecture);
        var header = GgufHeader.Read(TestModels.Get(spec, GgmlType.F32));
        var arch = architecture == "mistral" ? "llama" : architecture; // llama.cpp has no "mistral" architecture
        var headDim = spec.EffectiveHeadDim;

        Assert.Equal(3u, header.Version);
        Assert.Equal(arch, header.Metadata["general.architecture"]);
        Assert.Equal(32u, header.Metadata["general.alignment"]);
        Assert.Equal((uint)spec.LayerCount, header.Metadata[$"{arch}.block_count"]);
        Assert.Equal((uint)spec.KvHeadCount, header.Metadata[$"{arch}.attention.head_count_kv"]);
        Assert.Equal(spec.RopeFreqBase, header.Metadata[$"{arch}.rope.freq_base"]);
        Assert.Equal("llama", header.Metadata["tokenizer.ggml.model"]);
        Assert.Equal(TestModelGenerator.ChatMlTemplate, header.Metadata["tokenizer.chat_template"]);
        Assert.Equal(architecture == "mistral", header.Metadata.ContainsKey("llama.attention.sliding_window"));
        if (architecture == "qwen3") Assert.Equal((uint)headDim, header.Metadata["qwen3.attention.key_length"]);

        var expected = new List<string> { "token_embd.weight", "output_norm.weight" };
        if (!spec.TiedEmbeddings) expected.Add("output.weight");
        for (var i = 0; i < spec.LayerCount; i++)
        {
            expected.AddRange(new[] { "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down" }.Select(n => $"blk.{i}.{n}.weight"));
            if (architecture == "qwen2") expected.AddRange(new[] { "attn_q", "attn_k", "attn_v" }.Select(n => $"blk.{i}.{n}.bias"));
            if (architecture == "qwen3") expected.AddRange([$"blk.{i}.attn_q_norm.weight", $"blk.{i}.attn_k_norm.weight"]);
        }
        Assert.Equal(expected.Order(StringComparer.Ordinal), header.Tensors.Keys.Order(StringComparer.Ordinal));

        long qDim = spec.HeadCount * headDim, kvDim = spec.KvHeadCount * headDim;
        Assert.Equal([spec.EmbeddingLength, TestModelGenerator.Vocab.Size], header.Tensors["token_embd.weight"].Shape);
        Assert.Equal([spec.EmbeddingLength, qDim], header.Tensors["blk.0.attn_q.weight"].Shape);
        Assert.Equal([spec.EmbeddingLength, kvDim], header.Tensors["blk.0.attn_k.weight"].Shape);
        Assert.Equal([qDim, spec.EmbeddingLength], header.Tensors["blk.0.attn_output.weight"].Shape);
        Assert.Equal([spec.FeedForwardLength, spec.EmbeddingLength], header.Tensors["blk.0.ffn_down.weight"].Shape);

        // Norm weights are exactly 1; random weights stay within the uniform bound √3·scale.
        Assert.All(header.ReadF32("blk.1.ffn_norm.weight"), v => Assert.Equal(1f, v));
        if (architecture == "qwen3") Assert.All(header.ReadF32("blk.0.attn_k_norm.weight"), v => Assert.Equal(1f, v));
        var q = header.ReadF32("blk.0.attn_q.weight");
        var bound = spec.WeightScale * MathF.Sqrt(3f);
        Assert.All(q, v => Assert.InRange(v, -bound, bound));
        var std = Math.Sqrt(q.Select(v => (double)v * v).Average());
        Assert.InRange(std, spec.WeightScale * 0.9, spec.WeightScale * 1.1);
    }

    [Fact]
    public void RopeFreqFactorsAreWrittenAndLoaded()
    {
        var spec = new TestModelSpec { RopeFreqFactors = true, RopeFreqBase = 500_000f };
        var path = TestModels.Get(spec, GgmlType.Q8_0);
        var header = GgufHeader.Read(path);
        var factors = header.ReadF32("rope_freqs.weight");
        Assert.Equal(spec.EffectiveHeadDim / 2, factors.Length);
        Assert.Equal(1f, factors[0]);
        Assert.Equal(4f, factors[^1], 5);

        // llama.cpp must pick the factors up: same weights without them give other logits at later positions.
        const string prompt = "a prompt long enough for rotary frequencies to matter";
        var withFactors = LastLogits(path, prompt);
        var without = LastLogits(TestModels.Get(spec with { RopeFreqFactors = false }, GgmlType.Q8_0), prompt);
        var maxDelta = withFactors.Zip(without, (x, y) => Math.Abs(x - y)).Max();
        Assert.True(maxDelta > 1e-3f, $"rope_freqs.weight had no effect on llama.cpp's logits (max |delta| {maxDelta})");
    }

    private static float[] LastLogits(string path, string prompt)
    {
        NativeRuntime.EnsureLoaded();
        var parameters = new ModelParams(path) { ContextSize = 128, Threads = 2, BatchThreads = 2 };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        using var context = weights.CreateContext(parameters);
        var tokens = weights.Tokenize(prompt, true, false, Encoding.UTF8);
        var batch = new LLamaBatch();
        for (var i = 0; i < tokens.Length; i++) batch.Add(tokens[i], i, LLamaSeqId.Zero, i == tokens.Length - 1);
        Assert.Equal(DecodeResult.Ok, context.Decode(batch));
        return context.NativeHandle.GetLogitsIth(tokens.Length - 1).ToArray();
    }

    [Fact]
    public void SameSpecGivesIdenticalBytesAndSeedChangesWeights()
    {
        var dir = Directory.CreateTempSubdirectory("potluck-gen-").FullName;
        try
        {
            var spec = new TestModelSpec();
            string a = Path.Combine(dir, "a.gguf"), b = Path.Combine(dir, "b.gguf"), c = Path.Combine(dir, "c.gguf");
            var watch = Stopwatch.StartNew();
            TestModelGenerator.WriteF32(spec, a);
            var generation = watch.Elapsed;
            TestModelGenerator.WriteF32(spec, b);
            TestModelGenerator.WriteF32(spec with { Seed = 2 }, c);

            Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(b));
            Assert.Equal(File.ReadAllBytes(a).Length, File.ReadAllBytes(c).Length);
            Assert.NotEqual(File.ReadAllBytes(a), File.ReadAllBytes(c));
            Assert.True(generation < TimeSpan.FromSeconds(2), $"generating a 64x4 model took {generation}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void GetOrCreateCachesByHashAndLeavesNoTempFiles()
    {
        var dir = Directory.CreateTempSubdirectory("potluck-cache-").FullName;
        try
        {
            var spec = new TestModelSpec { LayerCount = 2, Seed = 7 };
            var progress = new List<double>();
            var first = TestModelGenerator.GetOrCreate(spec, GgmlType.Q8_0, dir, new SyncProgress(progress.Add));
            var written = File.GetLastWriteTimeUtc(first);
            var second = TestModelGenerator.GetOrCreate(spec, GgmlType.Q8_0, dir);
            var other = TestModelGenerator.GetOrCreate(spec with { Seed = 8 }, GgmlType.Q8_0, dir);

            Assert.Equal(first, second);
            Assert.Equal(written, File.GetLastWriteTimeUtc(second));
            Assert.NotEqual(first, other);
            Assert.Equal(GgmlType.Q8_0, GgufHeader.Read(first).Tensors["blk.0.ffn_up.weight"].Type);
            Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
            Assert.Equal(1.0, progress[^1]);
            Assert.Equal(progress.Order(), progress); // monotonic
            // The F32 source is kept for the next quant type of the same spec.
            Assert.Equal(4, Directory.GetFiles(dir, "*.gguf").Length);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void QuantizingAFileThatIsNotAModelFailsClearly()
    {
        var dir = Directory.CreateTempSubdirectory("potluck-bad-").FullName;
        try
        {
            var source = Path.Combine(dir, "bad.gguf");
            File.WriteAllText(source, "this is not a gguf file");
            var error = Assert.Throws<ModelQuantizationException>(() =>
                TestModelGenerator.Quantize(source, Path.Combine(dir, "out.gguf"), GgmlType.Q8_0));
            Assert.Contains("bad.gguf", error.Message);
            Assert.Throws<ArgumentException>(() => TestModelGenerator.Quantize(source, Path.Combine(dir, "o.gguf"), GgmlType.I32));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void InvalidSpecsAreRejected()
    {
        Assert.Throws<ArgumentException>(() => new TestModelSpec { Architecture = "gpt2" }.Validate());
        Assert.Throws<ArgumentException>(() => new TestModelSpec { HeadCount = 4, KvHeadCount = 3 }.Validate());
        Assert.Throws<ArgumentException>(() => new TestModelSpec { Architecture = "qwen2", RopeFreqFactors = true }.Validate());
        Assert.Throws<ArgumentException>(() => new TestModelSpec { EmbeddingLength = 66 }.Validate());
    }

    [Fact]
    public void DemoModelIsQuickToCreateAndServesVariedText()
    {
        var watch = Stopwatch.StartNew();
        var path = TestModels.Get(TestModelSpec.Demo, TestModelSpec.DemoWeightType);
        var created = watch.Elapsed;
        Assert.True(created < TimeSpan.FromSeconds(10), $"demo model took {created}");

        NativeRuntime.EnsureLoaded();
        var parameters = new ModelParams(path) { ContextSize = 128, Threads = 2, BatchThreads = 2 };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        Assert.Equal(8, weights.NativeHandle.LayerCount);
        var generated = GreedyDecode(weights, parameters, "Hello", 16);
        Assert.True(generated.Distinct().Count() >= 4, $"demo greedy output is degenerate: {string.Join(",", generated)}");
    }

    internal static int[] GreedyDecode(LLamaWeights weights, ModelParams parameters, string prompt, int count)
    {
        using var context = weights.CreateContext(parameters);
        var promptTokens = weights.Tokenize(prompt, true, false, Encoding.UTF8);
        var batch = new LLamaBatch();
        for (var i = 0; i < promptTokens.Length; i++) batch.Add(promptTokens[i], i, LLamaSeqId.Zero, i == promptTokens.Length - 1);
        var position = promptTokens.Length;
        var generated = new int[count];
        for (var step = 0; step < count; step++)
        {
            Assert.Equal(DecodeResult.Ok, context.Decode(batch));
            var logits = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1);
            var best = 0;
            for (var i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
            generated[step] = best;
            batch.Clear();
            batch.Add(best, position++, LLamaSeqId.Zero, true);
        }
        return generated;
    }

    private sealed class SyncProgress(Action<double> report) : IProgress<double>
    {
        public void Report(double value) => report(value);
    }
}

/// <summary>
/// An independent, test-only GGUF v3 reader (metadata + tensor index + F32 data), used to check what the writer
/// and llama.cpp's quantizer put on disk without depending on the engine's own reader.
/// </summary>
internal sealed class GgufHeader
{
    public required uint Version { get; init; }
    public required Dictionary<string, object> Metadata { get; init; }
    public required Dictionary<string, (GgmlType Type, long[] Shape, long Offset)> Tensors { get; init; }
    public required long DataStart { get; init; }
    public required string Path { get; init; }

    public static GgufHeader Read(string path)
    {
        using var reader = new BinaryReader(File.OpenRead(path), Encoding.UTF8);
        Assert.Equal("GGUF"u8.ToArray(), reader.ReadBytes(4));
        var version = reader.ReadUInt32();
        var tensorCount = reader.ReadUInt64();
        var kvCount = reader.ReadUInt64();
        var metadata = new Dictionary<string, object>();
        for (ulong i = 0; i < kvCount; i++)
        {
            var key = ReadString(reader);
            metadata[key] = ReadValue(reader, reader.ReadUInt32());
        }
        var tensors = new Dictionary<string, (GgmlType, long[], long)>();
        for (ulong i = 0; i < tensorCount; i++)
        {
            var name = ReadString(reader);
            var dims = new long[reader.ReadUInt32()];
            for (var d = 0; d < dims.Length; d++) dims[d] = (long)reader.ReadUInt64();
            var type = (GgmlType)reader.ReadUInt32();
            var offset = (long)reader.ReadUInt64();
            tensors[name] = (type, dims, offset);
        }
        var alignment = metadata.TryGetValue("general.alignment", out var a) ? (uint)a : 32u;
        var dataStart = (reader.BaseStream.Position + alignment - 1) / alignment * alignment;
        return new GgufHeader { Version = version, Metadata = metadata, Tensors = tensors, DataStart = dataStart, Path = path };
    }

    public float[] ReadF32(string name)
    {
        var (type, shape, offset) = Tensors[name];
        Assert.Equal(GgmlType.F32, type);
        var values = new float[shape.Aggregate(1L, (x, y) => x * y)];
        using var stream = File.OpenRead(Path);
        stream.Position = DataStart + offset;
        stream.ReadExactly(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
        return values;
    }

    private static string ReadString(BinaryReader reader) => Encoding.UTF8.GetString(reader.ReadBytes(checked((int)reader.ReadUInt64())));

    private static object ReadValue(BinaryReader reader, uint type) => type switch
    {
        0 => reader.ReadByte(),
        1 => reader.ReadSByte(),
        2 => reader.ReadUInt16(),
        3 => reader.ReadInt16(),
        4 => reader.ReadUInt32(),
        5 => reader.ReadInt32(),
        6 => reader.ReadSingle(),
        7 => reader.ReadByte() != 0,
        8 => ReadString(reader),
        9 => ReadArray(reader),
        10 => reader.ReadUInt64(),
        11 => reader.ReadInt64(),
        12 => reader.ReadDouble(),
        _ => throw new InvalidDataException($"unknown GGUF value type {type}"),
    };

    private static object[] ReadArray(BinaryReader reader)
    {
        var elementType = reader.ReadUInt32();
        var items = new object[checked((int)reader.ReadUInt64())];
        for (var i = 0; i < items.Length; i++) items[i] = ReadValue(reader, elementType);
        return items;
    }
}
