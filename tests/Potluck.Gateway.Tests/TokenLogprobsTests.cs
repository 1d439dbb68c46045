using Potluck.Gateway.Streaming;

namespace Potluck.Gateway.Tests;

/// <summary>The logprobs arithmetic against a plain double-precision log-softmax and sort.</summary>
public sealed class TokenLogprobsTests
{
    private static double[] LogSoftmax(float[] logits, float[]? bias)
    {
        var values = logits.Select((l, i) => (double)l + (bias?[i] ?? 0)).ToArray();
        var max = values.Max();
        var logZ = max + Math.Log(values.Sum(v => Math.Exp(v - max)));
        return values.Select(v => v - logZ).ToArray();
    }

    [Theory]
    [InlineData(0, false)]
    [InlineData(1, false)]
    [InlineData(5, true)]
    [InlineData(20, true)]
    public void RecordsLogSoftmaxAndTheTopAlternativesOverManySteps(int k, bool withBias)
    {
        var random = new Random(k * 7 + 1);
        const int vocab = 300;
        var logits = new float[vocab];
        float[]? bias = withBias ? new float[vocab] : null;
        if (bias is not null)
        {
            bias[3] = float.NegativeInfinity;
            bias[4] = 7.5f;
            bias[5] = -2f;
        }
        var store = new TokenLogprobs(k);
        var expected = new List<double[]>();
        // More steps than the initial capacity, so growth keeps earlier entries.
        for (var step = 0; step < 40; step++)
        {
            for (var i = 0; i < vocab; i++) logits[i] = (float)(random.NextDouble() * 20 - 10);
            logits[10] = logits[11]; // a tie: the lower id ranks first
            var token = random.Next(vocab);
            if (token == 3) token = 6;
            store.Record(logits, bias, token, textStart: step * 2);
            expected.Add(LogSoftmax(logits, bias));
            var reference = expected[^1];
            Assert.Equal(reference[token], store.Logprob(step), 1e-4);
        }
        Assert.Equal(40, store.Count);
        Assert.Equal(k, store.TopLength);
        for (var step = 0; step < 40; step++)
        {
            var reference = expected[step];
            var order = Enumerable.Range(0, vocab).OrderByDescending(i => reference[i]).ThenBy(i => i).Take(k).ToArray();
            for (var r = 0; r < k; r++)
            {
                Assert.Equal(order[r], store.TopId(step, r));
                Assert.Equal(reference[order[r]], store.TopLogprob(step, r), 1e-4);
            }
            Assert.Equal(step * 2, store.TextStart(step));
            if (withBias) Assert.DoesNotContain(3, Enumerable.Range(0, k).Select(r => store.TopId(step, r)));
        }
    }

    [Fact]
    public void TopCountBeyondTheVocabularyKeepsEveryToken()
    {
        var store = new TokenLogprobs(20);
        store.Record([1f, 3f, 2f], default, token: 2, textStart: 0);
        Assert.Equal(3, store.TopLength);
        Assert.Equal([1, 2, 0], Enumerable.Range(0, 3).Select(r => store.TopId(0, r)));
        var sum = Enumerable.Range(0, 3).Sum(r => Math.Exp(store.TopLogprob(0, r)));
        Assert.Equal(1.0, sum, 1e-5);
        store.RemoveLast();
        Assert.Equal(0, store.Count);
    }

    [Fact]
    public void EveryTokenBannedIsAnError() =>
        Assert.Throws<InvalidOperationException>(() => new TokenLogprobs(1).Record([1f, 2f], [float.NegativeInfinity, float.NegativeInfinity], 0, 0));
}
