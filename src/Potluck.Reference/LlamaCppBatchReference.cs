using System.Diagnostics;
using LLama;
using LLama.Common;
using LLama.Native;
using Potluck.Inference.Native;

namespace Potluck.Reference;

/// <summary>One batched llama.cpp run: when the prefill of every sequence ended, and how long each decode step took.</summary>
/// <param name="PrefillMs">From the start until every sequence had its first token (llama.cpp's time to first token for all of them).</param>
/// <param name="StepMs">Each later decode step, one token for every sequence (every sequence's inter-token latency).</param>
/// <param name="TotalMs">From the start until the last step ended.</param>
public sealed record BatchedRun(int Sequences, int TokensPerSequence, double PrefillMs, double[] StepMs, double TotalMs);

/// <summary>
/// llama.cpp (through LLamaSharp) decoding N sequences as one batch on one context: what a single process serving N
/// users at once does. Prompts go in as one batch (split at n_batch), then every decode call carries one token per
/// sequence. Same settings as <see cref="LlamaCppReference"/> (flash attention, F16 KV), with n_seq_max = N.
/// </summary>
public sealed class LlamaCppBatchReference : IDisposable
{
    private readonly LLamaWeights _weights;
    private readonly string _modelPath;
    private readonly int _threads;
    private readonly int _batchSize;
    private readonly LLamaBatch _batch = new();
    private LLamaContext? _context;
    private int _contextSequences;
    private int _contextTokensPerSequence;

    public int VocabSize { get; }

    public LlamaCppBatchReference(string modelPath, int threads, int batchSize = 512)
    {
        NativeRuntime.EnsureLoaded();
        (_modelPath, _threads, _batchSize) = (modelPath, threads, batchSize);
        _weights = LLamaWeights.LoadFromFile(LlamaCppReference.OracleParameters(modelPath, threads, batchSize));
        VocabSize = _weights.Vocab.Count;
    }

    /// <summary>
    /// Runs <paramref name="prompts"/> (one per sequence) to <paramref name="tokensPerSequence"/> greedy tokens each,
    /// starting from an empty KV cache. <paramref name="generated"/>, when given, receives each sequence's tokens.
    /// </summary>
    public BatchedRun Run(IReadOnlyList<int[]> prompts, int tokensPerSequence, int[][]? generated = null)
    {
        if (prompts.Count < 1 || tokensPerSequence < 1) throw new ArgumentException("need at least one prompt and one token");
        var sequences = prompts.Count;
        var longest = prompts.Max(p => p.Length);
        var context = ContextFor(sequences, longest + tokensPerSequence);
        var handle = context.NativeHandle;
        var batchLimit = _batchSize;
        var next = new int[sequences];
        var logitsIndex = new int[sequences];
        var steps = new double[tokensPerSequence - 1];

        handle.MemoryClear(true);
        var started = Stopwatch.GetTimestamp();

        // Prefill: all prompts in one token stream, cut into n_batch pieces; logits only at each sequence's last prompt token.
        Array.Fill(logitsIndex, -1);
        _batch.Clear();
        for (var s = 0; s < sequences; s++)
        {
            var prompt = prompts[s];
            for (var i = 0; i < prompt.Length; i++)
            {
                if (_batch.TokenCount == batchLimit)
                {
                    // Read the first tokens this piece finished before the next llama_decode overwrites its logits.
                    DecodeOrThrow(handle);
                    ReadPendingFirstTokens(handle, next, logitsIndex);
                    _batch.Clear();
                }
                var last = i == prompt.Length - 1;
                var index = _batch.Add(prompt[i], i, (LLamaSeqId)s, last);
                if (last) logitsIndex[s] = index;
            }
        }
        DecodeOrThrow(handle);
        ReadPendingFirstTokens(handle, next, logitsIndex);
        var first = Stopwatch.GetTimestamp();
        Record(generated, next, 0);

        // Decode: one token per sequence per llama_decode.
        var previous = first;
        for (var step = 1; step < tokensPerSequence; step++)
        {
            _batch.Clear();
            for (var s = 0; s < sequences; s++)
                _batch.Add(next[s], prompts[s].Length + step - 1, (LLamaSeqId)s, true);
            DecodeOrThrow(handle);
            for (var s = 0; s < sequences; s++)
                next[s] = LlamaCppReference.ArgMax(handle.GetLogitsIth(s)[..VocabSize]);
            var now = Stopwatch.GetTimestamp();
            steps[step - 1] = Stopwatch.GetElapsedTime(previous, now).TotalMilliseconds;
            previous = now;
            Record(generated, next, step);
        }
        return new BatchedRun(sequences, tokensPerSequence, Stopwatch.GetElapsedTime(started, first).TotalMilliseconds, steps,
            Stopwatch.GetElapsedTime(started, previous).TotalMilliseconds);

    }

    // Sequences whose last prompt token is in the batch just decoded: marked by a logits index >= 0, reset to -1 once read.
    private void ReadPendingFirstTokens(SafeLLamaContextHandle handle, int[] next, int[] logitsIndex)
    {
        for (var s = 0; s < next.Length; s++)
        {
            if (logitsIndex[s] < 0) continue;
            next[s] = LlamaCppReference.ArgMax(handle.GetLogitsIth(logitsIndex[s])[..VocabSize]);
            logitsIndex[s] = -1;
        }
    }

    private void DecodeOrThrow(SafeLLamaContextHandle handle)
    {
        if (_batch.TokenCount == 0) return;
        var result = handle.Decode(_batch);
        if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {result}");
    }

    private static void Record(int[][]? generated, int[] next, int step)
    {
        if (generated is null) return;
        for (var s = 0; s < next.Length; s++) generated[s][step] = next[s];
    }

    /// <summary>A context with n_seq_max = <paramref name="sequences"/> and room for each; reused while it fits.</summary>
    private LLamaContext ContextFor(int sequences, int tokensPerSequence)
    {
        if (_context is not null && _contextSequences == sequences && _contextTokensPerSequence >= tokensPerSequence) return _context;
        _context?.Dispose();
        _context = null;
        // Per-sequence KV streams split n_ctx evenly; llama.cpp pads n_ctx to 256, so each share is a multiple of 256.
        var perSequence = (tokensPerSequence + 8 + 255) / 256 * 256;
        var parameters = LlamaCppReference.OracleParameters(_modelPath, _threads, _batchSize);
        parameters.ContextSize = (uint)(sequences * perSequence);
        parameters.SeqMax = (uint)sequences;
        // Sequences share no prefix here, so a KV stream per sequence is llama.cpp's faster layout.
        parameters.KVUnified = false;
        _context = _weights.CreateContext(parameters);
        _contextSequences = sequences;
        _contextTokensPerSequence = tokensPerSequence;
        return _context;
    }

    public void Dispose()
    {
        _context?.Dispose();
        _weights.Dispose();
    }
}
