namespace Potluck.Gateway.Streaming;

/// <summary>
/// Per-token log probabilities of one generation: for each sampled token its log-probability, where its text starts
/// in the output, and the <see cref="TopCount"/> most likely alternatives. The definition is the log-softmax of the
/// model's logits after logit_bias, before penalties, temperature and truncation (top-k/top-p/min-p), so it does
/// not depend on the sampling settings. Buffers grow by doubling and are reused, so a step allocates nothing.
/// </summary>
public sealed class TokenLogprobs
{
    private readonly float[] _scratchLogprobs;
    private readonly int[] _scratchIds;
    private int[] _tokens = new int[16];
    private float[] _logprobs = new float[16];
    private int[] _textStarts = new int[16];
    private int[] _topIds;
    private float[] _topLogprobs;

    public TokenLogprobs(int topCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(topCount);
        TopCount = topCount;
        _topIds = new int[16 * Math.Max(topCount, 1)];
        _topLogprobs = new float[16 * Math.Max(topCount, 1)];
        _scratchIds = new int[Math.Max(topCount, 1)];
        _scratchLogprobs = new float[Math.Max(topCount, 1)];
    }

    /// <summary>Alternatives kept per token (top_logprobs); may be more than the vocabulary holds, then all are kept.</summary>
    public int TopCount { get; }
    public int Count { get; private set; }

    public int Token(int i) => _tokens[i];
    public float Logprob(int i) => _logprobs[i];
    /// <summary>Offset of the token's text in the output (UTF-16 chars), as the client sees it.</summary>
    public int TextStart(int i) => _textStarts[i];
    /// <summary>How many alternatives entry <paramref name="i"/> holds (TopCount, or the vocabulary size if smaller).</summary>
    public int TopLength { get; private set; }
    public int TopId(int i, int rank) => _topIds[i * TopCount + rank];
    public float TopLogprob(int i, int rank) => _topLogprobs[i * TopCount + rank];

    /// <summary>
    /// Records sampled <paramref name="token"/> given the step's <paramref name="logits"/> and the dense
    /// <paramref name="bias"/> (null without logit_bias).
    /// </summary>
    public void Record(ReadOnlySpan<float> logits, ReadOnlySpan<float> bias, int token, int textStart)
    {
        var logNormalizer = LogSoftmaxTop(logits, bias, _scratchIds, _scratchLogprobs, TopCount, out var topLength);
        TopLength = topLength;
        Grow();
        var i = Count++;
        _tokens[i] = token;
        _logprobs[i] = Biased(logits, bias, token) - logNormalizer;
        _textStarts[i] = textStart;
        for (var r = 0; r < topLength; r++)
        {
            _topIds[i * TopCount + r] = _scratchIds[r];
            _topLogprobs[i * TopCount + r] = _scratchLogprobs[r];
        }
    }

    /// <summary>Forgets the last entry (the end-of-generation token, which has no text).</summary>
    public void RemoveLast()
    {
        if (Count > 0) Count--;
    }

    private static float Biased(ReadOnlySpan<float> logits, ReadOnlySpan<float> bias, int i) => bias.IsEmpty ? logits[i] : logits[i] + bias[i];

    /// <summary>
    /// log Σ exp(logit + bias) over the vocabulary, and the <paramref name="k"/> most likely tokens with their
    /// log-probabilities, best first (ties: lower id first). Returns the log normalizer.
    /// </summary>
    public static float LogSoftmaxTop(ReadOnlySpan<float> logits, ReadOnlySpan<float> bias, Span<int> topIds, Span<float> topLogprobs, int k, out int topLength)
    {
        k = Math.Min(k, logits.Length);
        topLength = 0;
        var max = float.NegativeInfinity;
        for (var i = 0; i < logits.Length; i++)
        {
            var value = Biased(logits, bias, i);
            if (value > max) max = value;
            if (k == 0) continue;
            // Insertion into the small sorted top list: most tokens fail the first comparison.
            if (topLength == k && !(value > topLogprobs[k - 1])) continue;
            var at = topLength < k ? topLength++ : k - 1;
            while (at > 0 && value > topLogprobs[at - 1])
            {
                topLogprobs[at] = topLogprobs[at - 1];
                topIds[at] = topIds[at - 1];
                at--;
            }
            topLogprobs[at] = value;
            topIds[at] = i;
        }
        if (float.IsNegativeInfinity(max)) throw new InvalidOperationException("every token has logit -infinity");
        double sum = 0;
        for (var i = 0; i < logits.Length; i++) sum += Math.Exp(Biased(logits, bias, i) - max);
        var logNormalizer = (float)(max + Math.Log(sum));
        for (var r = 0; r < topLength; r++) topLogprobs[r] -= logNormalizer;
        return logNormalizer;
    }

    private void Grow()
    {
        if (Count < _tokens.Length) return;
        var size = _tokens.Length * 2;
        Array.Resize(ref _tokens, size);
        Array.Resize(ref _logprobs, size);
        Array.Resize(ref _textStarts, size);
        Array.Resize(ref _topIds, size * Math.Max(TopCount, 1));
        Array.Resize(ref _topLogprobs, size * Math.Max(TopCount, 1));
    }
}
