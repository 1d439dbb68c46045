using System.Text;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;
using Potluck.Inference.Text;
using Vocab = Potluck.Inference.Models.TestModelGenerator.Vocab;

namespace Potluck.Inference.Tests;

public sealed class TextTests : IDisposable
{
    private const string MultiByte = "héllo 世界 🙂";
    private readonly Tokenizer _tokenizer = Tokenizer.Load(TestModels.Small());

    public void Dispose() => _tokenizer.Dispose();

    [Fact]
    public void VocabularyFacts()
    {
        Assert.Equal(Vocab.Size, _tokenizer.VocabSize);
        Assert.Equal(Vocab.Bos, _tokenizer.BosToken);
        Assert.Equal(Vocab.Eos, _tokenizer.EosToken);
        Assert.True(_tokenizer.AddBosByDefault);
        Assert.True(_tokenizer.IsEndOfGeneration(Vocab.Eos));
        Assert.True(_tokenizer.IsEndOfGeneration(Vocab.ImEnd));
        Assert.False(_tokenizer.IsEndOfGeneration(Vocab.FirstByte + 'a'));
        Assert.False(_tokenizer.IsEndOfGeneration(Vocab.Bos));
        Assert.False(_tokenizer.IsEndOfGeneration(-1));
    }

    [Theory]
    [InlineData("Hello, world!")]
    [InlineData(MultiByte)]
    [InlineData("line one\nline two\ttab  double space")]
    public void EncodeDecodeRoundTrips(string text)
    {
        var tokens = _tokenizer.Encode(text, addBos: true, parseSpecial: false);
        Assert.Equal(Vocab.Bos, tokens[0]);
        Assert.Equal(text, _tokenizer.Decode(tokens));
        Assert.Equal(text, _tokenizer.Decode(_tokenizer.Encode(text, addBos: false, parseSpecial: false)));
    }

    [Fact]
    public void TextBecomesByteTokensAndSpacePieces()
    {
        var tokens = _tokenizer.Encode("hi é", addBos: false, parseSpecial: false);
        int[] expected = [Vocab.FirstByte + 'h', Vocab.FirstByte + 'i', Vocab.Space, Vocab.FirstByte + 0xC3, Vocab.FirstByte + 0xA9];
        Assert.Equal(expected, tokens);
    }

    [Fact]
    public void SpecialTokensParseOnlyWhenAsked()
    {
        Assert.Equal([Vocab.ImStart], _tokenizer.Encode("<|im_start|>", addBos: false, parseSpecial: true));
        var literal = _tokenizer.Encode("<|im_start|>", addBos: false, parseSpecial: false);
        Assert.DoesNotContain(Vocab.ImStart, literal);
        Assert.Equal("<|im_start|>".Length, literal.Length);
    }

    [Fact]
    public void StreamingDecoderNeverEmitsPartialUtf8()
    {
        var tokens = _tokenizer.Encode(MultiByte, addBos: true, parseSpecial: false);
        var decoder = _tokenizer.CreateStreamingDecoder();
        var text = new StringBuilder();
        var heldBack = 0;
        foreach (var token in tokens)
        {
            var piece = decoder.Add(token);
            if (piece.Length == 0) heldBack++;
            Assert.DoesNotContain('\uFFFD', piece);
            // Every piece must be well-formed UTF-16 on its own: no surrogate split across pieces.
            Assert.Equal(piece, Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(piece)));
            if (piece.Length > 0) Assert.False(char.IsHighSurrogate(piece[^1]));
            text.Append(piece);
        }
        Assert.Equal(MultiByte, text.ToString());
        // é, 世, 界 and 🙂 are 2, 3, 3 and 4 byte tokens: bytes before each character's last were held back (plus BOS).
        Assert.Equal(1 + 1 + 2 + 2 + 3, heldBack);
    }

    [Fact]
    public void OutOfRangeTokenIdsAreRejectedBeforeReachingLlamaCpp()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _tokenizer.Decode([Vocab.Size]));
        Assert.Throws<ArgumentOutOfRangeException>(() => _tokenizer.Decode([-1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => _tokenizer.CreateStreamingDecoder().Add(Vocab.Size + 5));
    }

    [Fact]
    public void ChatTemplateFormatsRolesAndContent()
    {
        (string, string)[] messages = [("system", "Be brief."), ("user", "Hi there")];
        var prompt = _tokenizer.ApplyChatTemplate(messages, addAssistantPrompt: true);
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", prompt);

        var closed = _tokenizer.ApplyChatTemplate(messages, addAssistantPrompt: false);
        Assert.EndsWith("Hi there<|im_end|>\n", closed);

        var tokens = _tokenizer.Encode(prompt, addBos: true, parseSpecial: true);
        Assert.Equal(3, tokens.Count(t => t == Vocab.ImStart));
        Assert.Equal(2, tokens.Count(t => t == Vocab.ImEnd));
    }

    [Fact]
    public void ModelWithoutTemplateFailsClearly()
    {
        using var bare = Tokenizer.Load(TestModels.Get(new TestModelSpec { ChatTemplate = null, LayerCount = 1 }, GgmlType.Q8_0));
        Assert.Null(bare.ChatTemplate);
        var error = Assert.Throws<ChatTemplateException>(() => bare.ApplyChatTemplate([("user", "hi")], addAssistantPrompt: true));
        Assert.Contains("no chat template", error.Message);
    }

    [Fact]
    public void GreedyIsArgmax()
    {
        using var sampler = new Sampler(SamplingOptions.Greedy, Vocab.Size);
        for (var seed = 0; seed < 20; seed++)
        {
            var logits = RandomLogits(seed, 3f);
            Assert.Equal(ArgMax(logits), sampler.SampleAndAccept(logits));
        }
    }

    [Fact]
    public void TopKOneIsGreedyEvenWhenHot()
    {
        using var sampler = new Sampler(new SamplingOptions { Temperature = 1.5f, TopK = 1, Seed = 3 }, Vocab.Size);
        for (var seed = 0; seed < 20; seed++)
        {
            var logits = RandomLogits(seed, 0.5f);
            Assert.Equal(ArgMax(logits), sampler.SampleAndAccept(logits));
        }
    }

    [Fact]
    public void SeededSamplingIsReproducibleAndSeedsDiffer()
    {
        var options = new SamplingOptions { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 42 };
        var first = SampleSequence(options);
        var again = SampleSequence(options);
        var otherSeed = SampleSequence(options with { Seed = 43 });
        Assert.Equal(first, again);
        Assert.NotEqual(first, otherSeed);
        Assert.True(first.Distinct().Count() > 10, "sampling at temperature 1 over near-flat logits should spread");

        // Reset reseeds: the chain replays the same draws.
        using var sampler = new Sampler(options, Vocab.Size);
        var before = Enumerable.Range(0, 8).Select(i => sampler.SampleAndAccept(RandomLogits(i, 0.5f))).ToArray();
        sampler.Reset();
        var after = Enumerable.Range(0, 8).Select(i => sampler.SampleAndAccept(RandomLogits(i, 0.5f))).ToArray();
        Assert.Equal(before, after);
    }

    [Fact]
    public void RepeatPenaltyChangesTheChoice()
    {
        var logits = new float[Vocab.Size];
        logits[10] = 2.0f;
        logits[11] = 1.9f;

        using var plain = new Sampler(SamplingOptions.Greedy, Vocab.Size);
        plain.Accept(10);
        Assert.Equal(10, plain.Sample(logits));

        using var penalized = new Sampler(SamplingOptions.Greedy with { RepeatPenalty = 1.5f }, Vocab.Size);
        Assert.Equal(10, penalized.Sample(logits)); // nothing seen yet
        penalized.Accept(10);
        Assert.Equal(11, penalized.Sample(logits)); // 2.0 / 1.5 < 1.9

        using var presence = new Sampler(SamplingOptions.Greedy with { PresencePenalty = 0.5f }, Vocab.Size);
        presence.Accept([10, 3, 4]);
        Assert.Equal(11, presence.Sample(logits)); // 2.0 - 0.5 < 1.9
    }

    [Fact]
    public void SamplingAllocatesNothingPerToken()
    {
        using var sampler = new Sampler(new SamplingOptions { Seed = 1 }, Vocab.Size);
        var logits = RandomLogits(1, 2f);
        for (var i = 0; i < 16; i++) sampler.SampleAndAccept(logits); // warm up JIT paths
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 200; i++) sampler.SampleAndAccept(logits);
        var perToken = (GC.GetAllocatedBytesForCurrentThread() - before) / 200.0;
        Assert.True(perToken < 64, $"sampling allocated {perToken} bytes per token");
    }

    [Fact]
    public void WrongLogitCountIsRejected()
    {
        using var sampler = new Sampler(SamplingOptions.Greedy, Vocab.Size);
        Assert.Throws<ArgumentException>(() => sampler.Sample(new float[Vocab.Size - 1]));
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplingOptions { TopP = 0f }, Vocab.Size));
    }

    private static int[] SampleSequence(SamplingOptions options)
    {
        using var sampler = new Sampler(options, Vocab.Size);
        var tokens = new int[32];
        for (var i = 0; i < tokens.Length; i++) tokens[i] = sampler.SampleAndAccept(RandomLogits(100 + i, 0.3f));
        return tokens;
    }

    private static float[] RandomLogits(int seed, float spread)
    {
        var rng = new SplitMix64((ulong)seed * 7919 + 1);
        var logits = new float[Vocab.Size];
        for (var i = 0; i < logits.Length; i++) logits[i] = rng.NextSymmetric(spread);
        return logits;
    }

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        var best = 0;
        for (var i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }
}
