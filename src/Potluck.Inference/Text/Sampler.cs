using System.Diagnostics;
using System.Text.RegularExpressions;
using LLama.Native;
using Potluck.Inference.Native;

namespace Potluck.Inference.Text;

/// <summary>
/// llama.cpp's sampler chain (penalties → top-k → top-p → min-p → temperature → distribution, or penalties → greedy
/// at temperature 0) applied to logits the caller computed. The chain holds all sampling state: the penalty
/// history and the RNG, seeded once from <see cref="SamplingOptions.Seed"/>. So one Sampler per session, fed the
/// same logits and Accept calls, reproduces the same tokens; rebuilding it (same seed) and replaying the accepted
/// tokens restores the penalty history but restarts the RNG. Not thread-safe.
/// A grammar (<see cref="SamplingOptions.Grammar"/>) sits outside the chain, as in llama.cpp's common_sampler
/// (common/sampling.cpp): the chain picks a token, the grammar checks it, and only if it is rejected are the logits
/// reset and sampled again with the grammar applied first. The retry draws the RNG again, as llama.cpp does, so
/// seeded output matches llama.cpp's.
/// </summary>
public sealed class Sampler : IDisposable
{
    private readonly SafeLLamaSamplerChainHandle _chain;
    // Outside the chain: apply and accept reach it without touching the chain's state.
    private readonly LlamaGrammarSampler? _grammar;
    // Reused for every call, pinned so the native side can hold its address without a pin per token.
    private readonly LLamaTokenData[] _candidates;
    private readonly LLamaTokenData[] _single = GC.AllocateArray<LLamaTokenData>(1, pinned: true);
    private readonly long _grammarBudgetTicks;
    // Lazy grammars: llama.cpp hands the text from the trigger on to the grammar inside llama_sampler_accept and
    // throws a C++ exception (which aborts this process) if it does not fit. So the trigger is tracked here too, and
    // that text is first checked on a probe grammar, byte token by byte token, with the same matcher.
    private readonly LazyTrigger? _lazy;

    /// <summary>A sampler without grammar support (a grammar in the options is refused: it needs the vocabulary).</summary>
    public Sampler(SamplingOptions options, int vocabSize) : this(options, vocabSize, tokenizer: null) { }

    /// <summary>A sampler that can also honour <see cref="SamplingOptions.Grammar"/>, matched against this tokenizer's vocabulary.</summary>
    public Sampler(SamplingOptions options, Tokenizer tokenizer)
        : this(options, (tokenizer ?? throw new ArgumentNullException(nameof(tokenizer))).VocabSize, tokenizer) { }

    private Sampler(SamplingOptions options, int vocabSize, Tokenizer? tokenizer)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        LlamaApi.EnsureReady();

        Options = options;
        VocabSize = vocabSize;
        if (options.Grammar is { } grammar)
        {
            if (tokenizer is null) throw new ArgumentException("a grammar needs the vocabulary: construct the Sampler with the Tokenizer", nameof(options));
            _grammar = CreateGrammar(grammar, tokenizer);
            if (grammar.IsLazy) _lazy = new LazyTrigger(grammar, tokenizer);
            _grammarBudgetTicks = (long)(grammar.StepBudget.TotalSeconds * Stopwatch.Frequency);
        }
        _candidates = GC.AllocateArray<LLamaTokenData>(vocabSize, pinned: true);
        _chain = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        if (options.RepeatPenalty != 1f || options.FrequencyPenalty != 0f || options.PresencePenalty != 0f)
            _chain.AddPenalties(options.PenaltyLastN, options.RepeatPenalty, options.FrequencyPenalty, options.PresencePenalty);
        if (options.IsGreedy)
        {
            _chain.AddGreedySampler();
            return;
        }
        if (options.TopK > 0) _chain.AddTopK(options.TopK);
        if (options.TopP < 1f) _chain.AddTopP(options.TopP, 1);
        if (options.MinP > 0f) _chain.AddMinP(options.MinP, 1);
        _chain.AddTemperature(options.Temperature);
        _chain.AddDistributionSampler(options.Seed);
    }

    private static LlamaGrammarSampler CreateGrammar(GrammarSpec grammar, Tokenizer tokenizer)
    {
        foreach (var token in grammar.TriggerTokens) tokenizer.CheckToken(token);
        // llama.cpp compiles trigger patterns with std::regex and would throw across the native boundary on a bad
        // one; .NET's parser accepts about the same ECMAScript subset, so refuse here what it refuses.
        foreach (var pattern in grammar.TriggerPatterns)
        {
            try { _ = new Regex(pattern, RegexOptions.ECMAScript | RegexOptions.CultureInvariant, TimeSpan.FromMilliseconds(100)); }
            catch (ArgumentException e) { throw new GrammarException($"grammar trigger pattern is not a valid regex: {e.Message}", e); }
        }
        return LlamaGrammarSampler.Create(tokenizer.ModelHandle, grammar.Gbnf, grammar.Root, grammar.TriggerPatterns, grammar.TriggerTokens, grammar.IsLazy)
            ?? throw new GrammarException("llama.cpp could not parse the grammar (syntax error, undefined rule, left recursion or missing root rule)");
    }

    public SamplingOptions Options { get; }
    public int VocabSize { get; }

    /// <summary>Whether this sampler constrains tokens by a grammar.</summary>
    public bool HasGrammar => _grammar is not null;

    /// <summary>Time the grammar took in the last <see cref="Sample"/> call (zero without a grammar).</summary>
    public TimeSpan LastGrammarTime { get; private set; }

    /// <summary>Chooses a token from <paramref name="logits"/> (length VocabSize). Does not accept it: call <see cref="Accept(int)"/>.</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        if (logits.Length != VocabSize)
            throw new ArgumentException($"expected {VocabSize} logits, got {logits.Length}", nameof(logits));
        Fill(logits);
        var token = ApplyChain();
        if (_grammar is null) return token;

        var started = Stopwatch.GetTimestamp();
        if (Allows(token))
        {
            RecordGrammarTime(started);
            return token;
        }
        // Rejected: constrain the full candidate list by the grammar, then let the chain choose among what is left.
        Fill(logits);
        using (var pin = LLamaTokenDataArrayNative.Create(new LLamaTokenDataArray(_candidates, isSorted: false), out var native))
        {
            _grammar.Apply(ref native);
            if (!AnyAllowed(native))
                throw new GrammarException("the grammar allows no token here (it cannot be continued with this vocabulary)");
        }
        RecordGrammarTime(started);
        // The grammar left -inf on rejected tokens in _candidates; the chain reads them as they are.
        return ApplyChain();
    }

    private void Fill(ReadOnlySpan<float> logits)
    {
        var candidates = _candidates;
        for (var i = 0; i < candidates.Length; i++)
            candidates[i] = new LLamaTokenData(i, logits[i], 0f);
    }

    private int ApplyChain()
    {
        using var pin = LLamaTokenDataArrayNative.Create(new LLamaTokenDataArray(_candidates, isSorted: false), out var native);
        _chain.Apply(ref native);
        var selected = native.Selected;
        if (selected < 0 || selected >= (long)native.Size)
            throw new InvalidOperationException("the sampler chain selected no token (all logits -inf or NaN?)");
        return (int)native.Data[(int)selected].ID;
    }

    // llama.cpp's rejection check: the grammar applied to a one-token list leaves its logit finite when allowed.
    private bool Allows(int token)
    {
        _single[0] = new LLamaTokenData(token, 1f, 0f);
        using var pin = LLamaTokenDataArrayNative.Create(new LLamaTokenDataArray(_single, isSorted: false), out var native);
        _grammar!.Apply(ref native);
        return !float.IsNegativeInfinity(native.Data[0].Logit);
    }

    private static bool AnyAllowed(in LLamaTokenDataArrayNative native)
    {
        var data = native.Data;
        for (var i = 0; i < data.Length; i++)
            if (!float.IsNegativeInfinity(data[i].Logit)) return true;
        return false;
    }

    private void RecordGrammarTime(long started)
    {
        var ticks = Stopwatch.GetTimestamp() - started;
        LastGrammarTime = Stopwatch.GetElapsedTime(started, started + ticks);
        if (ticks > _grammarBudgetTicks) throw new GrammarBudgetExceededException(LastGrammarTime, Options.Grammar!.StepBudget);
    }

    /// <summary>
    /// Records a generated token: the grammar advances over it and the penalties see it. A token the grammar does
    /// not allow is refused here (llama.cpp would abort the process on it).
    /// </summary>
    public void Accept(int token)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)token, (uint)VocabSize, nameof(token));
        if (_grammar is not null)
        {
            if (!Allows(token))
                throw new ArgumentException($"token {token} does not continue the grammar", nameof(token));
            _lazy?.BeforeAccept(token);
            _grammar.Accept(token);
        }
        _chain.Accept(token);
    }

    /// <summary>
    /// Records prompt tokens, so repetition penalties also see the prompt. The grammar does not see them: it
    /// constrains the output only (llama.cpp's common_sampler_accept with accept_grammar false).
    /// </summary>
    public void Accept(ReadOnlySpan<int> tokens)
    {
        foreach (var token in tokens)
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)token, (uint)VocabSize, nameof(tokens));
            _chain.Accept(token);
        }
    }

    /// <summary>Samples then accepts.</summary>
    public int SampleAndAccept(ReadOnlySpan<float> logits)
    {
        var token = Sample(logits);
        // Sample already checked the token against the grammar; skip Accept's second check.
        _lazy?.BeforeAccept(token);
        _grammar?.Accept(token);
        _chain.Accept(token);
        return token;
    }

    /// <summary>Clears the penalty history and the grammar's progress and reseeds the RNG from the original seed.</summary>
    public void Reset()
    {
        _chain.Reset();
        _grammar?.Reset();
        _lazy?.Reset();
    }

    public void Dispose()
    {
        _chain.Dispose();
        _grammar?.Dispose();
    }

    /// <summary>
    /// Mirrors llama.cpp's lazy-grammar trigger (llama_grammar_accept_impl): a trigger token fires with its own piece;
    /// otherwise pieces are buffered and each trigger pattern is searched in the buffer, and a match fires with the
    /// text from its first non-empty group (else the match) on. Before a firing token reaches llama.cpp, that text is
    /// fed to a fresh eager grammar as single-byte tokens; a mismatch becomes a GrammarException instead of an abort.
    /// Patterns run over the bytes read as Latin-1, as std::regex reads them.
    /// </summary>
    private sealed class LazyTrigger(GrammarSpec grammar, Tokenizer tokenizer)
    {
        private readonly Regex[] _patterns = grammar.TriggerPatterns
            .Select(p => new Regex(p, RegexOptions.ECMAScript | RegexOptions.CultureInvariant, TimeSpan.FromMilliseconds(100))).ToArray();
        private readonly HashSet<int> _tokens = [.. grammar.TriggerTokens];
        private readonly List<byte> _buffer = [];
        private bool _fired;

        public void Reset()
        {
            _buffer.Clear();
            _fired = false;
        }

        public void BeforeAccept(int token)
        {
            if (_fired) return;
            var piece = tokenizer.GrammarPiece(token);
            if (_tokens.Contains(token))
            {
                Fire(piece);
                return;
            }
            _buffer.AddRange(piece);
            var text = System.Text.Encoding.Latin1.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_buffer));
            foreach (var pattern in _patterns)
            {
                Match match;
                try { match = pattern.Match(text); }
                catch (RegexMatchTimeoutException e) { throw new GrammarException("a grammar trigger pattern took too long to match", e); }
                if (!match.Success) continue;
                var start = match.Index;
                for (var g = 1; g < match.Groups.Count; g++)
                    if (match.Groups[g].Success && match.Groups[g].Length > 0) { start = match.Groups[g].Index; break; }
                Fire(_buffer.GetRange(start, _buffer.Count - start).ToArray());
                return;
            }
        }

        private void Fire(byte[] constrained)
        {
            _fired = true;
            _buffer.Clear();
            var bytes = tokenizer.SingleByteTokens;
            using var probe = LlamaGrammarSampler.Create(tokenizer.ModelHandle, grammar.Gbnf, grammar.Root, [], [], lazy: false)
                ?? throw new GrammarException("llama.cpp could not parse the grammar");
            var single = GC.AllocateArray<LLamaTokenData>(1, pinned: true);
            foreach (var b in constrained)
            {
                var token = bytes[b];
                // A vocabulary without this byte as a token cannot be checked this way; let llama.cpp have it.
                if (token < 0) return;
                single[0] = new LLamaTokenData(token, 1f, 0f);
                using (LLamaTokenDataArrayNative.Create(new LLamaTokenDataArray(single, isSorted: false), out var native))
                {
                    probe.Apply(ref native);
                    if (float.IsNegativeInfinity(native.Data[0].Logit))
                        throw new GrammarException($"the output from the grammar trigger on ('{JsonSafe(constrained)}') does not fit the grammar");
                }
                probe.Accept(token);
            }
        }

        private static string JsonSafe(byte[] text)
        {
            var s = System.Text.Encoding.UTF8.GetString(text);
            return s.Length <= 64 ? s : s[..64] + "...";
        }
    }
}
