using LLama;
using LLama.Common;
using LLama.Native;
using Potluck.Inference.Native;

namespace Potluck.Reference;

/// <summary>
/// llama.cpp (through LLamaSharp) running a whole GGUF on one context: the correctness oracle and the
/// speed baseline. Uses the settings Potluck's engine mirrors: flash attention and an F16 KV cache.
/// </summary>
public sealed class LlamaCppReference : IDisposable
{
    private readonly LLamaWeights _weights;
    private readonly LLamaContext _context;
    private readonly LLamaBatch _batch = new();
    private int _position;

    public int VocabSize { get; }

    public LlamaCppReference(string modelPath, int contextSize, int threads, int batchSize = 512)
    {
        NativeRuntime.EnsureLoaded();
        var parameters = OracleParameters(modelPath, threads, batchSize);
        parameters.ContextSize = (uint)contextSize;
        _weights = LLamaWeights.LoadFromFile(parameters);
        _context = _weights.CreateContext(parameters);
        VocabSize = _weights.Vocab.Count;
    }

    /// <summary>
    /// How every llama.cpp run of the project is set up, so Potluck is compared with one configuration: CPU only, flash
    /// attention, F16 K and V (as the engine caches them), the same threads for decode and batches.
    /// </summary>
    internal static ModelParams OracleParameters(string modelPath, int threads, int batchSize) => new(modelPath)
    {
        BatchSize = (uint)batchSize,
        UBatchSize = (uint)batchSize,
        Threads = threads,
        BatchThreads = threads,
        GpuLayerCount = 0,
        FlashAttention = true,
        TypeK = GGMLType.GGML_TYPE_F16,
        TypeV = GGMLType.GGML_TYPE_F16,
    };

    /// <summary>Forgets the sequence so the next call starts at position 0.</summary>
    public void Reset()
    {
        _context.NativeHandle.MemoryClear(true);
        _position = 0;
    }

    /// <summary>Appends <paramref name="tokens"/> and copies the last token's logits into <paramref name="logits"/>.</summary>
    public void Evaluate(ReadOnlySpan<int> tokens, Span<float> logits)
    {
        _batch.Clear();
        for (var i = 0; i < tokens.Length; i++)
            _batch.Add(tokens[i], _position + i, LLamaSeqId.Zero, i == tokens.Length - 1);
        var result = _context.NativeHandle.Decode(_batch);
        if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {result}");
        _position += tokens.Length;
        _context.NativeHandle.GetLogitsIth(tokens.Length - 1)[..logits.Length].CopyTo(logits);
    }

    public static int ArgMax(ReadOnlySpan<float> values)
    {
        var best = 0;
        for (var i = 1; i < values.Length; i++)
            if (values[i] > values[best]) best = i;
        return best;
    }

    public void Dispose()
    {
        _context.Dispose();
        _weights.Dispose();
    }
}
