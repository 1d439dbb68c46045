using Potluck.Inference.Families;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Engine;

/// <summary>
/// The gateway's part of the model: token-embedding lookup, and final norm plus LM head to logits, with the
/// family's <see cref="HeadTraits"/> (embedding scale, final softcap).
/// Binds only token_embd, output_norm and output (or token_embd again when embeddings are tied).
/// </summary>
public sealed class ModelHead : IDisposable
{
    private readonly ModelInfo _info;
    private readonly IntPtr _embeddings;
    private readonly IntPtr _outputNorm;
    private readonly IntPtr _output;
    private readonly HeadTraits _traits;
    private readonly GraphRunner _runner;
    private readonly Lock _gate = new();
    private bool _disposed;

    public int Width { get; }
    public int VocabSize { get; }

    public ModelHead(GgufModel model, int threads = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        _info = model.Info;
        Width = _info.EmbeddingLength;
        VocabSize = _info.VocabSize;
        _traits = (ModelFamilies.Find(_info.Architecture) ?? throw new UnsupportedArchitectureException(_info.Architecture, ModelFamilies.Supported)).Head(_info);
        _embeddings = model.Weight("token_embd.weight", WeightUse.Plain, Width, VocabSize);
        _outputNorm = model.Weight("output_norm.weight", WeightUse.Plain, Width);
        _output = _info.TiedEmbeddings
            ? model.WeightTwin("token_embd.weight", "output.weight(tied)", WeightUse.MatMul, Width, VocabSize)
            : model.Weight("output.weight", WeightUse.MatMul, Width, VocabSize);
        _runner = new GraphRunner(threads > 0 ? threads : Math.Max(1, Environment.ProcessorCount));
    }

    /// <summary>Looks up <paramref name="tokens"/> into <paramref name="hidden"/> ([tokens, Width] F32).</summary>
    public void Embed(ReadOnlySpan<int> tokens, Span<float> hidden)
    {
        if (tokens.IsEmpty) throw new HiddenStateShapeException("no tokens to embed");
        if (hidden.Length != (long)tokens.Length * Width)
            throw new HiddenStateShapeException($"{tokens.Length} tokens need {(long)tokens.Length * Width} floats, got {hidden.Length}");
        foreach (var t in tokens)
            if ((uint)t >= (uint)VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokens), t, $"token id outside the vocabulary [0, {VocabSize})");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var (ctx, graph) = _runner.Begin(16);
            try
            {
                var ids = Ggml.ggml_new_tensor_1d(ctx, (int)GgmlType.I32, tokens.Length);
                Ggml.ggml_set_input(ids);
                var rows = Ggml.ggml_get_rows(ctx, _embeddings, ids);
                if (_traits.EmbeddingScale != 1f) rows = Ggml.ggml_scale(ctx, rows, _traits.EmbeddingScale);
                Ggml.ggml_set_output(rows);
                Ggml.ggml_build_forward_expand(graph, rows);
                _runner.Allocate(graph);
                GraphRunner.Write(ids, tokens);
                _runner.Compute(graph);
                GraphRunner.Read(rows, hidden);
            }
            finally
            {
                _runner.End();
            }
        }
    }

    /// <summary>Final RMS norm and LM head over <paramref name="rows"/> hidden rows into [rows, VocabSize] logits.</summary>
    public void Logits(ReadOnlySpan<float> hidden, int rows, Span<float> logits)
    {
        if (rows <= 0 || hidden.Length != (long)rows * Width)
            throw new HiddenStateShapeException($"{rows} rows of width {Width} need {(long)rows * Width} floats, got {hidden.Length}");
        if (logits.Length != (long)rows * VocabSize)
            throw new HiddenStateShapeException($"{rows} rows of logits need {(long)rows * VocabSize} floats, got {logits.Length}");
        var bad = LayerSpan.FirstNonFinite(hidden);
        if (bad >= 0) throw new NonFiniteHiddenStateException($"hidden state row {bad / Width} holds {hidden[bad]}");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var (ctx, graph) = _runner.Begin(16);
            try
            {
                var x = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.F32, Width, rows);
                Ggml.ggml_set_input(x);
                var normed = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, x, _info.RmsNormEps), _outputNorm);
                var result = Ggml.ggml_mul_mat(ctx, _output, normed);
                if (_traits.FinalLogitSoftcap > 0f)
                {
                    var cap = _traits.FinalLogitSoftcap;
                    result = Ggml.ggml_scale(ctx, Ggml.ggml_tanh(ctx, Ggml.ggml_scale(ctx, result, 1f / cap)), cap);
                }
                Ggml.ggml_set_output(result);
                Ggml.ggml_build_forward_expand(graph, result);
                _runner.Allocate(graph);
                GraphRunner.Write(x, hidden);
                _runner.Compute(graph);
                GraphRunner.Read(result, logits);
            }
            finally
            {
                _runner.End();
            }
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            _runner.Dispose();
        }
    }
}
