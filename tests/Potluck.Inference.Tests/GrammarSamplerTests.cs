using System.Text.RegularExpressions;
using Potluck.Inference.Text;
using Vocab = Potluck.Inference.Models.TestModelGenerator.Vocab;

namespace Potluck.Inference.Tests;

/// <summary>The Sampler's grammar (llama.cpp's grammar sampler) on random logits over the test model's byte vocabulary.</summary>
public sealed class GrammarSamplerTests : IDisposable
{
    private readonly Tokenizer _tokenizer = Tokenizer.Load(TestModels.Small());

    public void Dispose() => _tokenizer.Dispose();

    private static float[] RandomLogits(Random random, float scale)
    {
        var logits = new float[Vocab.Size];
        for (var i = 0; i < logits.Length; i++) logits[i] = (float)(random.NextDouble() * 2 - 1) * scale;
        return logits;
    }

    /// <summary>Samples until end of generation or <paramref name="max"/> tokens; returns the text and whether it ended.</summary>
    private (string Text, bool Ended) Generate(Sampler sampler, int seed, int max)
    {
        var random = new Random(seed);
        var tokens = new List<int>();
        for (var i = 0; i < max; i++)
        {
            var token = sampler.SampleAndAccept(RandomLogits(random, 4f));
            if (_tokenizer.IsEndOfGeneration(token)) return (_tokenizer.Decode(tokens.ToArray()), true);
            tokens.Add(token);
        }
        return (_tokenizer.Decode(tokens.ToArray()), false);
    }

    [Theory]
    [InlineData(0f, 1u)]
    [InlineData(0.9f, 7u)]
    [InlineData(1.5f, 11u)]
    public void OutputMatchesTheGrammar(float temperature, uint seed)
    {
        var grammar = new GrammarSpec("""root ::= "id-" [0-9]{2,4} ("," [a-c]+)? """);
        var options = new SamplingOptions { Temperature = temperature, Seed = seed, TopK = 0, MinP = 0f, TopP = 1f, Grammar = grammar };
        using var sampler = new Sampler(options, _tokenizer);
        Assert.True(sampler.HasGrammar);
        var (text, ended) = Generate(sampler, (int)seed, 64);
        Assert.True(ended, $"the grammar must end the output: '{text}'");
        Assert.Matches(new Regex("^id-[0-9]{2,4}(,[a-c]+)?$"), text);
    }

    [Fact]
    public void SeededGrammarSamplingIsReproducibleAndResetRestarts()
    {
        var options = new SamplingOptions { Temperature = 1f, Seed = 5, Grammar = new GrammarSpec("root ::= [a-z]{1,20}") };
        using var first = new Sampler(options, _tokenizer);
        using var second = new Sampler(options, _tokenizer);
        var a = Generate(first, 3, 30);
        Assert.Equal(a, Generate(second, 3, 30));
        first.Reset();
        Assert.Equal(a, Generate(first, 3, 30));
    }

    [Fact]
    public void PromptTokensDoNotAdvanceTheGrammar()
    {
        using var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = new GrammarSpec("""root ::= "x" """) }, _tokenizer);
        sampler.Accept(_tokenizer.Encode("not x at all", addBos: false, parseSpecial: false));
        Assert.Equal(("x", true), Generate(sampler, 1, 4));
    }

    [Fact]
    public void AcceptRefusesATokenOutsideTheGrammar()
    {
        using var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = new GrammarSpec("""root ::= "a" """) }, _tokenizer);
        var b = _tokenizer.Encode("b", addBos: false, parseSpecial: false).Single();
        Assert.Throws<ArgumentException>(() => sampler.Accept(b));
        Assert.Throws<ArgumentException>(() => sampler.Accept(Vocab.Eos));
        sampler.Accept(_tokenizer.Encode("a", addBos: false, parseSpecial: false).Single());
        sampler.Accept(Vocab.Eos);
    }

    [Theory]
    [InlineData("root ::= \"a\" )")]
    [InlineData("root ::= undefined-rule")]
    [InlineData("root ::= root \"a\"")]
    [InlineData("other ::= \"a\"")]
    [InlineData("root ::= \"unterminated")]
    [InlineData("root ::= [a-")]
    public void BadGrammarIsAGrammarException(string gbnf)
    {
        Assert.ThrowsAny<Exception>(() =>
        {
            using var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = new GrammarSpec(gbnf) }, _tokenizer);
        });
        var error = Record.Exception(() => new Sampler(SamplingOptions.Greedy with { Grammar = new GrammarSpec(gbnf) }, _tokenizer).Dispose());
        Assert.True(error is GrammarException or ArgumentException, $"{error?.GetType().Name}: {error?.Message}");
    }

    [Fact]
    public void LazyGrammarWaitsForItsTrigger()
    {
        // Before "<<" the output is free; from the trigger on it must match the grammar.
        var grammar = new GrammarSpec("""root ::= "<<" [0-9]+ ">>" """, "root", [@"<<"], []);
        using var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = grammar }, _tokenizer);
        foreach (var token in _tokenizer.Encode("free text <<", addBos: false, parseSpecial: false)) sampler.Accept(token);
        var (text, ended) = Generate(sampler, 2, 30);
        Assert.True(ended, text);
        Assert.Matches(new Regex("^[0-9]+>>$"), text);
    }

    [Fact]
    public void TriggerTextThatDoesNotFitIsAGrammarExceptionNotAnAbort()
    {
        // The match (from its group) is "<<x": llama.cpp would throw a C++ exception inside llama_sampler_accept.
        var grammar = new GrammarSpec("""root ::= "<<" [0-9]+ """, "root", ["(<<)x"], []);
        using var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = grammar }, _tokenizer);
        var tokens = _tokenizer.Encode("ab<<x", addBos: false, parseSpecial: false);
        foreach (var token in tokens[..^1]) sampler.Accept(token);
        var error = Assert.Throws<GrammarException>(() => sampler.Accept(tokens[^1]));
        Assert.Contains("does not fit the grammar", error.Message);
    }

    [Fact]
    public void TriggerTokenFiresWithItsPiece()
    {
        var fits = new GrammarSpec("""root ::= "<|im_start|>" [0-9]{1,3} """, "root", [], [Vocab.ImStart]);
        using (var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = fits }, _tokenizer))
        {
            sampler.Accept(_tokenizer.Encode("hello", addBos: false, parseSpecial: false));
            sampler.Accept(Vocab.ImStart);
            var (text, ended) = Generate(sampler, 3, 10);
            Assert.True(ended, text);
            Assert.Matches(new Regex("^[0-9]{1,3}$"), text);
        }
        var misfit = new GrammarSpec("""root ::= "a" """, "root", [], [Vocab.ImStart]);
        using (var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = misfit }, _tokenizer))
            Assert.Throws<GrammarException>(() => sampler.Accept(Vocab.ImStart));
    }

    [Fact]
    public void BadTriggerPatternOrTokenIsRefusedBeforeLlamaCpp()
    {
        Assert.Throws<GrammarException>(() => new Sampler(SamplingOptions.Greedy with
        {
            Grammar = new GrammarSpec("root ::= \"a\"", "root", ["(unclosed"], []),
        }, _tokenizer));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(SamplingOptions.Greedy with
        {
            Grammar = new GrammarSpec("root ::= \"a\"", "root", [], [Vocab.Size + 5]),
        }, _tokenizer));
    }

    [Fact]
    public void GrammarNeedsTheTokenizer() =>
        Assert.Throws<ArgumentException>(() => new Sampler(SamplingOptions.Greedy with { Grammar = new GrammarSpec("root ::= \"a\"") }, Vocab.Size));

    [Fact]
    public void StepOverTheBudgetThrows()
    {
        var grammar = new GrammarSpec("root ::= [a-z]+") { StepBudget = TimeSpan.FromTicks(1) };
        using var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = grammar }, _tokenizer);
        var error = Assert.Throws<GrammarBudgetExceededException>(() => sampler.Sample(RandomLogits(new Random(1), 1f)));
        Assert.Contains("budget", error.Message);
    }

    [Fact]
    public void GrammarStepIsFastOnTheTestVocabulary()
    {
        using var sampler = new Sampler(new SamplingOptions { Temperature = 1f, Seed = 2, Grammar = new GrammarSpec("root ::= [a-z ]{0,200}") }, _tokenizer);
        var random = new Random(4);
        var worst = TimeSpan.Zero;
        for (var i = 0; i < 100; i++)
        {
            var token = sampler.SampleAndAccept(RandomLogits(random, 4f));
            if (sampler.LastGrammarTime > worst) worst = sampler.LastGrammarTime;
            if (_tokenizer.IsEndOfGeneration(token)) break;
        }
        Assert.True(worst < GrammarSpec.DefaultStepBudget, $"worst grammar step {worst.TotalMilliseconds:F2} ms");
    }
}
