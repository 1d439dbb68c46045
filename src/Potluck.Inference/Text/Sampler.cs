using LLama.Native;

namespace Potluck.Inference.Text;

/// <summary>
/// llama.cpp's sampler chain (penalties → top-k → top-p → min-p → temperature → distribution, or penalties → greedy
/// at temperature 0) applied to logits the caller computed. The chain holds all sampling state: the penalty
/// history and the RNG, seeded once from <see cref="SamplingOptions.Seed"/>. So one Sampler per session, fed the
/// same logits and Accept calls, reproduces the same tokens; rebuilding it (same seed) and replaying the accepted
/// tokens restores the penalty history but restarts the RNG. Not thread-safe.
/// </summary>
public sealed class Sampler : IDisposable
{
    private readonly SafeLLamaSamplerChainHandle _chain;
    // Reused for every call, pinned so the native side can hold its address without a pin per token.
    private readonly LLamaTokenData[] _candidates;

    public Sampler(SamplingOptions options, int vocabSize)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        LlamaApi.EnsureReady();

        Options = options;
        VocabSize = vocabSize;
        _candidates = GC.AllocateArray<LLamaTokenData>(vocabSize, pinned: true);
        _chain = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        // First in the chain, as llama.cpp's common sampler puts it: every later stage sees the biased logits.
        if (options.LogitBias is { Count: > 0 } bias)
        {
            if (bias.Keys.Any(token => token >= vocabSize)) throw new ArgumentException($"a logit bias names a token outside the vocabulary [0, {vocabSize})", nameof(options));
            _chain.AddLogitBias(vocabSize, bias.Select(b => new LLamaLogitBias { Token = b.Key, Bias = b.Value }).ToArray());
        }
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

    public SamplingOptions Options { get; }
    public int VocabSize { get; }

    /// <summary>Chooses a token from <paramref name="logits"/> (length VocabSize). Does not accept it: call <see cref="Accept"/>.</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        if (logits.Length != VocabSize)
            throw new ArgumentException($"expected {VocabSize} logits, got {logits.Length}", nameof(logits));
        var candidates = _candidates;
        for (var i = 0; i < candidates.Length; i++)
            candidates[i] = new LLamaTokenData(i, logits[i], 0f);

        using var pin = LLamaTokenDataArrayNative.Create(new LLamaTokenDataArray(candidates, isSorted: false), out var native);
        _chain.Apply(ref native);
        var selected = native.Selected;
        if (selected < 0 || selected >= (long)native.Size)
            throw new InvalidOperationException("the sampler chain selected no token (all logits -inf or NaN?)");
        return (int)native.Data[(int)selected].ID;
    }

    /// <summary>Records a token as part of the sequence (penalty history). Call for every generated token.</summary>
    public void Accept(int token)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)token, (uint)VocabSize, nameof(token));
        _chain.Accept(token);
    }

    /// <summary>Records prompt tokens, so repetition penalties also see the prompt.</summary>
    public void Accept(ReadOnlySpan<int> tokens)
    {
        foreach (var token in tokens) Accept(token);
    }

    /// <summary>Samples then accepts.</summary>
    public int SampleAndAccept(ReadOnlySpan<float> logits)
    {
        var token = Sample(logits);
        _chain.Accept(token);
        return token;
    }

    /// <summary>Clears the penalty history and reseeds the RNG from the original seed.</summary>
    public void Reset() => _chain.Reset();

    public void Dispose() => _chain.Dispose();
}
