using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;

namespace Potluck.Inference.Tests;

/// <summary>Bad files and bad steps each raise a specific exception with a clear message; the process survives.</summary>
public sealed class EngineInputTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("potluck-bad-input-").FullName;
    private static string Good => TestModels.Get(OracleTests.Spec("llama"), GgmlType.Q8_0);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Copy(Func<byte[], byte[]> mutate, string name)
    {
        var path = Path.Combine(_dir, name);
        File.WriteAllBytes(path, mutate(File.ReadAllBytes(Good)));
        return path;
    }

    [Fact]
    public void MissingFileIsAFormatError()
    {
        var e = Assert.Throws<GgufFormatException>(() => GgufModel.Open(Path.Combine(_dir, "nope.gguf")));
        Assert.Contains("file not found", e.Message);
    }

    [Theory]
    [InlineData(10)]
    [InlineData(200)]
    [InlineData(5000)]
    public void TruncatedFileIsAFormatError(int keepBytes)
    {
        var path = Copy(b => b[..keepBytes], $"cut{keepBytes}.gguf");
        var e = Assert.Throws<GgufFormatException>(() => GgufModel.Open(path));
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void TruncatedTensorDataIsAFormatError()
    {
        var path = Copy(b => b[..(b.Length - 4096)], "short.gguf");
        var e = Assert.Throws<GgufFormatException>(() => GgufModel.Open(path));
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void BadMagicAndRandomBytesAreFormatErrors()
    {
        var magic = Copy(b => { b[0] = (byte)'X'; return b; }, "magic.gguf");
        Assert.Contains("bad magic", Assert.Throws<GgufFormatException>(() => GgufModel.Open(magic)).Message);
        var random = new byte[64 * 1024];
        new Random(5).NextBytes(random);
        var garbage = Path.Combine(_dir, "garbage.gguf");
        File.WriteAllBytes(garbage, random);
        Assert.Throws<GgufFormatException>(() => GgufModel.Open(garbage));
    }

    [Fact]
    public void CorruptHeaderBytesNeverCrashTheProcess()
    {
        // Flip bytes across the header at a fixed seed: every outcome must be a managed result, never a native abort.
        var original = File.ReadAllBytes(Good);
        var rng = new Random(42);
        var headerEnd = (int)GgufFile.Read(Good).DataOffset;
        for (var trial = 0; trial < 60; trial++)
        {
            var bytes = (byte[])original.Clone();
            for (var k = 0; k < 4; k++) bytes[rng.Next(4, headerEnd)] = (byte)rng.Next(256);
            var path = Path.Combine(_dir, $"flip{trial}.gguf");
            File.WriteAllBytes(path, bytes);
            try
            {
                using var model = GgufModel.Open(path);
                using var span = new LayerSpan(model, 0, model.Info.LayerCount, new SpanOptions { Threads = 1 });
            }
            catch (EngineException)
            {
                // A specific, explained refusal is the expected outcome for most flips.
            }
            File.Delete(path);
        }
    }

    [Fact]
    public void UnsupportedArchitectureNamesTheSupportedOnes()
    {
        var path = Path.Combine(_dir, "gpt2.gguf");
        new GgufWriter()
            .Add("general.architecture", "gpt2")
            .Add("gpt2.block_count", 1u)
            .AddTensor("token_embd.weight", [8, 4], d => d.Fill(0.1f))
            .WriteTo(path);
        Assert.Equal("gpt2", GgufModel.Inspect(path).Architecture);
        var e = Assert.Throws<UnsupportedArchitectureException>(() => GgufModel.Open(path));
        // The registry's whole list, whatever families it holds; the dense ones come first.
        Assert.Equal($"unsupported architecture 'gpt2'; supported: {string.Join(", ", Potluck.Inference.Families.ModelFamilies.Supported)}", e.Message);
        Assert.StartsWith("unsupported architecture 'gpt2'; supported: llama, mistral, qwen2, qwen3", e.Message);
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        var spec = OracleTests.Spec("llama");
        var full = TestModels.Get(spec, GgmlType.F32);
        // Rename one tensor in the index (same length) so the file is valid GGUF but lacks blk.1.ffn_up.weight.
        var path = Copy(_ => Rename(File.ReadAllBytes(full), "blk.1.ffn_up.weight", "blk.1.ffn_XX.weight"), "missing.gguf");
        using var model = GgufModel.Open(path);
        using (new LayerSpan(model, 0, 1)) { }
        var e = Assert.Throws<ModelTensorException>(() => new LayerSpan(model, 1, 2));
        Assert.Contains("blk.1.ffn_up.weight", e.Message);
    }

    private static byte[] Rename(byte[] bytes, string from, string to)
    {
        var f = System.Text.Encoding.ASCII.GetBytes(from);
        var at = bytes.AsSpan().IndexOf(f);
        Assert.True(at > 0);
        System.Text.Encoding.ASCII.GetBytes(to).CopyTo(bytes, at);
        return bytes;
    }

    [Theory]
    [InlineData(-1, 2)]
    [InlineData(0, 5)]
    [InlineData(3, 3)]
    [InlineData(3, 1)]
    public void SpanOutsideTheModelIsRefused(int start, int end)
    {
        using var model = GgufModel.Open(Good);
        var e = Assert.Throws<LayerRangeException>(() => new LayerSpan(model, start, end));
        Assert.Contains($"[{start}, {end})", e.Message);
        Assert.Contains("[0, 4)", e.Message);
    }

    [Fact]
    public void BadStepsAreRefusedAndTheSpanKeepsWorking()
    {
        using var model = GgufModel.Open(Good);
        using var span = new LayerSpan(model, 0, 2, new SpanOptions { Threads = 1 });
        var w = span.Width;
        span.OpenSession("s", 16);
        var row = new float[w];
        var output = new float[w];

        Assert.Throws<UnknownSessionException>(() => span.Forward([new SpanSegment("ghost", 0, 1)], row, output));
        Assert.Contains("width 256", Assert.Throws<HiddenStateShapeException>(
            () => span.Forward([new SpanSegment("s", 0, 1)], new float[w - 1], output)).Message);
        Assert.Throws<HiddenStateShapeException>(() => span.Forward([new SpanSegment("s", 0, 2)], row, output));
        Assert.Throws<HiddenStateShapeException>(() => span.Forward([new SpanSegment("s", 0, 1, LastRowOnly: true)], row, output));
        Assert.Throws<PositionMismatchException>(() => span.Forward([new SpanSegment("s", 3, 1)], row, output));
        Assert.Throws<ContextOverflowException>(() => span.Forward([new SpanSegment("s", 0, 17)], new float[17 * w], new float[17 * w]));
        Assert.Throws<ContextOverflowException>(() => span.OpenSession("huge", 100_000));

        row[7] = float.NaN;
        Assert.Contains("row 0, column 7", Assert.Throws<NonFiniteHiddenStateException>(
            () => span.Forward([new SpanSegment("s", 0, 1)], row, output)).Message);
        row[7] = float.PositiveInfinity;
        Assert.Throws<NonFiniteHiddenStateException>(() => span.Forward([new SpanSegment("s", 0, 1)], row, output));

        // Nothing above touched the cache: the session is still empty and a good step works.
        Assert.Equal(0, span.SessionLength("s"));
        row[7] = 0.25f;
        span.Forward([new SpanSegment("s", 0, 1)], row, output);
        Assert.Equal(1, span.SessionLength("s"));
        Assert.Equal(-1, LayerSpan.FirstNonFinite(output));
        Assert.Throws<PositionMismatchException>(() => span.Truncate("s", 2));
        Assert.Throws<UnknownSessionException>(() => span.SessionLength("ghost"));
    }

    [Fact]
    public void HeadRefusesBadTokensAndShapes()
    {
        using var model = GgufModel.Open(Good);
        using var head = new ModelHead(model, 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => head.Embed([head.VocabSize], new float[head.Width]));
        Assert.Throws<ArgumentOutOfRangeException>(() => head.Embed([-1], new float[head.Width]));
        Assert.Throws<HiddenStateShapeException>(() => head.Embed([1], new float[head.Width + 1]));
        Assert.Throws<HiddenStateShapeException>(() => head.Logits(new float[head.Width], 2, new float[2 * head.VocabSize]));
        var nan = new float[head.Width];
        nan[0] = float.NaN;
        Assert.Throws<NonFiniteHiddenStateException>(() => head.Logits(nan, 1, new float[head.VocabSize]));
    }
}
