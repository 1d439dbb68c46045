using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Families;

/// <summary>
/// Llama-style decoders: llama (and Mistral files), qwen2 (Q/K/V biases) and qwen3 (per-head Q/K RMS norms).
/// Pre-norm attention with RoPE, then a gated feed-forward; optional parts are found by tensor presence, as
/// llama.cpp's loader does.
/// </summary>
internal sealed class LlamaFamily(string architecture, RopeKind rope, bool requireQkNorm = false) : ModelFamily
{
    public override string Architecture => architecture;
    public override RopeKind Rope => rope;

    /// <summary>Mixtral is a llama file with expert_count: its expert hyper-parameters, otherwise none.</summary>
    internal override FamilyParameters ReadParameters(GgufMetadata metadata, ModelInfo common) =>
        metadata.Int("expert_count", 0) > 0 ? ExpertParameters.Read(metadata, common, common.FeedForwardLength) : FamilyParameters.None;

    internal override void Validate(ModelInfo info)
    {
        if (info.Parameters is ExpertParameters experts) experts.Validate(info);
    }

    internal override ILayerBlock BindLayer(GgufModel model, int layer) => LlamaBlock.Bind(model, layer, requireQkNorm, MixtralFeedForward);

    /// <summary>
    /// A llama layer with ffn_gate_inp is a Mixtral expert layer (llama.cpp's llama graph branches the same way):
    /// softmax routing, normalized weights, experts as wide as feed_forward_length.
    /// </summary>
    private static IFeedForward MixtralFeedForward(GgufModel model, int layer)
    {
        var i = model.Info;
        if (!model.HasTensor($"blk.{layer}.ffn_gate_inp.weight") || i.Parameters is not ExpertParameters e)
            return DenseFeedForward.Bind(model, layer, i.EmbeddingLength, i.FeedForwardLength);
        var settings = new MoeSettings(e.ExpertCount, e.ExpertUsedCount, ExpertGating.Softmax, NormalizeWeights: true);
        return MoeFeedForward.Bind(model, layer, i.EmbeddingLength, i.FeedForwardLength, settings);
    }

    /// <summary>RoPE of every layer: the file's base and linear scale, YaRN's extrapolation when the file asks for it.</summary>
    internal static RopeSettings RopeOf(GgufModel model, int dimensions)
    {
        var info = model.Info;
        var factors = info.HasRopeFreqFactors ? model.Weight("rope_freqs.weight", WeightUse.Plain, dimensions / 2) : IntPtr.Zero;
        return new RopeSettings(dimensions, info.Rope, info.ContextLength, info.RopeFreqBase, info.RopeFreqScale,
            ExtFactor: info.RopeScaling == RopeScaling.Yarn ? 1f : 0f, FreqFactors: factors);
    }
}

/// <summary>One Llama-style layer: x + attn(norm(x)), then h + ffn(norm(h)).</summary>
internal sealed class LlamaBlock : ILayerBlock
{
    private readonly IntPtr _attnNorm, _q, _k, _v, _output, _qBias, _kBias, _vBias, _outputBias, _qNorm, _kNorm, _ffnNorm;
    private readonly IFeedForward _ffn;
    private readonly RopeSettings _rope;
    private readonly int _heads, _kvHeads, _headDim;
    private readonly float _eps, _scale;

    public LayerKv Kv { get; }

    private LlamaBlock(ModelInfo info, IntPtr[] w, IFeedForward ffn, RopeSettings rope)
    {
        (_attnNorm, _q, _k, _v, _output, _qBias, _kBias, _vBias, _outputBias, _qNorm, _kNorm, _ffnNorm) =
            (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11]);
        _ffn = ffn;
        _rope = rope;
        _heads = info.HeadCount;
        _kvHeads = info.KvHeadCount;
        _headDim = info.HeadDim;
        _eps = info.RmsNormEps;
        _scale = 1f / MathF.Sqrt(info.HeadDim);
        Kv = new LayerKv(_headDim * _kvHeads, _headDim * _kvHeads, null);
    }

    public int GraphNodes(int segments) => 48 + 16 * segments + _ffn.GraphNodes;

    /// <summary>Binds the attention and norms; <paramref name="feedForward"/> binds the layer's feed-forward (dense by default).</summary>
    public static LlamaBlock Bind(GgufModel model, int layer, bool requireQkNorm, Func<GgufModel, int, IFeedForward>? feedForward = null)
    {
        var i = model.Info;
        long embd = i.EmbeddingLength, q = (long)i.HeadDim * i.HeadCount, kv = (long)i.HeadDim * i.KvHeadCount, ff = i.FeedForwardLength;
        var p = $"blk.{layer}.";
        var qNorm = model.OptionalWeight(p + "attn_q_norm.weight", WeightUse.Plain, i.HeadDim);
        var kNorm = model.OptionalWeight(p + "attn_k_norm.weight", WeightUse.Plain, i.HeadDim);
        if (requireQkNorm && (qNorm == IntPtr.Zero || kNorm == IntPtr.Zero))
            throw new ModelTensorException($"{i.Architecture} layer {layer} lacks attn_q_norm/attn_k_norm");
        IntPtr[] w =
        [
            model.Weight(p + "attn_norm.weight", WeightUse.Plain, embd),
            model.Weight(p + "attn_q.weight", WeightUse.MatMul, embd, q),
            model.Weight(p + "attn_k.weight", WeightUse.MatMul, embd, kv),
            model.Weight(p + "attn_v.weight", WeightUse.MatMul, embd, kv),
            model.Weight(p + "attn_output.weight", WeightUse.MatMul, q, embd),
            model.OptionalWeight(p + "attn_q.bias", WeightUse.Plain, q),
            model.OptionalWeight(p + "attn_k.bias", WeightUse.Plain, kv),
            model.OptionalWeight(p + "attn_v.bias", WeightUse.Plain, kv),
            model.OptionalWeight(p + "attn_output.bias", WeightUse.Plain, embd),
            qNorm, kNorm,
            model.Weight(p + "ffn_norm.weight", WeightUse.Plain, embd),
        ];
        var ffn = feedForward?.Invoke(model, layer) ?? DenseFeedForward.Bind(model, layer, embd, ff);
        return new LlamaBlock(i, w, ffn, LlamaFamily.RopeOf(model, i.HeadDim));
    }

    public IntPtr Build(SpanGraph g, int spanLayer, IntPtr input)
    {
        var ctx = g.Context;
        var rows = g.Rows;
        var normed = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, input, _eps), _attnNorm);
        var q = Linear(ctx, _q, _qBias, normed);
        var k = Linear(ctx, _k, _kBias, normed);
        var v = Linear(ctx, _v, _vBias, normed);
        q = Ggml.ggml_reshape_3d(ctx, q, _headDim, _heads, rows);
        k = Ggml.ggml_reshape_3d(ctx, k, _headDim, _kvHeads, rows);
        if (_qNorm != IntPtr.Zero)
        {
            q = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, q, _eps), _qNorm);
            k = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, k, _eps), _kNorm);
        }
        q = g.Rope(q, _rope);
        k = g.Rope(k, _rope);
        var attention = g.Attention(spanLayer, new AttentionInputs(q, k, v, _heads, _kvHeads, _headDim, _headDim, _scale));

        var cur = g.PruneRows(spanLayer, Linear(ctx, _output, _outputBias, attention));
        var ffnInput = Ggml.ggml_add(ctx, cur, g.PruneRows(spanLayer, input));
        normed = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, ffnInput, _eps), _ffnNorm);
        return Ggml.ggml_add(ctx, _ffn.Build(g, normed), ffnInput);
    }

    internal static IntPtr Linear(IntPtr ctx, IntPtr weight, IntPtr bias, IntPtr input)
    {
        var y = Ggml.ggml_mul_mat(ctx, weight, input);
        return bias == IntPtr.Zero ? y : Ggml.ggml_add(ctx, y, bias);
    }
}
