using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Families;

/// <summary>gpt-oss hyper-parameters as llama.cpp's LLM_ARCH_OPENAI_MOE loader and context derive them.</summary>
/// <param name="ExpertCount">expert_count.</param>
/// <param name="ExpertUsedCount">expert_used_count.</param>
/// <param name="ExpertFeedForwardLength">expert_feed_forward_length (required by llama.cpp).</param>
/// <param name="SlidingWindow">attention.sliding_window (required by llama.cpp).</param>
/// <param name="SlidingWindowPeriod">attention.sliding_window_pattern, default 2: layer l slides when l % period &lt; period − 1.</param>
/// <param name="SlidingFreqBase">rope.freq_base_swa, default the global base.</param>
/// <param name="YarnOriginalContext">rope.scaling.original_context_length, default context_length (n_ctx_orig_yarn).</param>
/// <param name="ExtFactor">YaRN extrapolation mix: 1 under rope.scaling.type yarn, else 0 (cparams.yarn_ext_factor).</param>
/// <param name="AttnFactor">The attn_factor handed to ggml_rope_ext (cparams.yarn_attn_factor after llama.cpp's derivation).</param>
/// <param name="BetaFast">rope.scaling.yarn_beta_fast, default 32.</param>
/// <param name="BetaSlow">rope.scaling.yarn_beta_slow, default 1.</param>
public sealed record GptOssParameters(
    int ExpertCount, int ExpertUsedCount, int ExpertFeedForwardLength, int SlidingWindow, int SlidingWindowPeriod,
    float SlidingFreqBase, int YarnOriginalContext, float ExtFactor, float AttnFactor, float BetaFast, float BetaSlow) : FamilyParameters
{
    /// <summary>llama_hparams::set_swa_pattern(period) without dense_first.</summary>
    public bool IsSliding(int layer) => SlidingWindowPeriod == 0 || layer % SlidingWindowPeriod < SlidingWindowPeriod - 1;
}

/// <summary>
/// gpt-oss (llama.cpp's openai-moe-iswa graph): pre-norm attention with Q/K/V/O biases, per-head sinks and NeoX
/// YaRN RoPE, sliding-window and global layers interleaved; then a post-attention norm and a biased mixture of
/// experts (top-k on the biased router logits, softmax over the chosen, swiglu_oai experts with add_id biases).
/// </summary>
internal sealed class GptOssFamily : ModelFamily
{
    public override string Architecture => "gpt-oss";
    public override RopeKind Rope => RopeKind.NeoX;

    internal override FamilyParameters ReadParameters(GgufMetadata m, ModelInfo common)
    {
        var yarn = common.RopeScaling == RopeScaling.Yarn;
        var ext = yarn ? 1f : 0f;
        // llama_context: with ext_factor ≠ 0, attn_factor = get_mscale(1/freq_scale, 1) · 1/(1 + 0.1·ln(1/freq_scale)),
        // cancelling the mscale ggml_rope_ext applies itself; then × rope.scaling.attn_factor. Same float order.
        var attn = 1f;
        if (ext != 0f)
        {
            var factor = 1f / common.RopeFreqScale;
            attn = factor <= 1f ? 1f : 0.1f * 1f * MathF.Log(factor) + 1f;
            attn *= 1f / (1f + 0.1f * MathF.Log(factor));
        }
        attn *= m.Float("rope.scaling.attn_factor", 1f);
        return new GptOssParameters(
            ExpertCount: m.Int("expert_count", 0),
            ExpertUsedCount: m.Int("expert_used_count", 0),
            ExpertFeedForwardLength: m.Int("expert_feed_forward_length", 0),
            SlidingWindow: m.Int("attention.sliding_window", 0),
            SlidingWindowPeriod: m.Int("attention.sliding_window_pattern", 2),
            SlidingFreqBase: m.Float("rope.freq_base_swa", common.RopeFreqBase),
            YarnOriginalContext: m.Int("rope.scaling.original_context_length") is { } orig and > 0 ? orig : common.ContextLength,
            ExtFactor: ext,
            AttnFactor: attn,
            BetaFast: m.Float("rope.scaling.yarn_beta_fast", 32f),
            BetaSlow: m.Float("rope.scaling.yarn_beta_slow", 1f));
    }

    internal override void Validate(ModelInfo info)
    {
        var p = Parameters(info);
        void Require(bool ok, string what)
        {
            if (!ok) throw new GgufFormatException(info.Path, what);
        }
        Require(p.ExpertCount >= 1 && p.ExpertUsedCount >= 1 && p.ExpertUsedCount <= p.ExpertCount,
            $"gpt-oss needs 1 ≤ expert_used_count ({p.ExpertUsedCount}) ≤ expert_count ({p.ExpertCount})");
        Require(p.ExpertFeedForwardLength > 0, "gpt-oss.expert_feed_forward_length must be positive");
        Require(p.SlidingWindow > 0, "gpt-oss.attention.sliding_window must be positive");
        Require(p.SlidingWindowPeriod >= 0, "gpt-oss.attention.sliding_window_pattern must not be negative");
        Require(float.IsFinite(p.SlidingFreqBase) && p.SlidingFreqBase > 0, "gpt-oss.rope.freq_base_swa must be positive");
        Require(float.IsFinite(info.RopeFreqScale) && info.RopeFreqScale > 0, "gpt-oss.rope.scaling.factor must be positive");
    }

    public override LayerKv DescribeKv(ModelInfo info, int layer)
    {
        var width = info.HeadDim * info.KvHeadCount;
        return new LayerKv(width, width, Parameters(info).IsSliding(layer) ? Parameters(info).SlidingWindow : null);
    }

    internal override ILayerBlock BindLayer(GgufModel model, int layer) => GptOssBlock.Bind(model, layer, Parameters(model.Info));

    private static GptOssParameters Parameters(ModelInfo info) =>
        info.Parameters as GptOssParameters ?? throw new InvalidOperationException($"'{info.Path}' was not read as a gpt-oss file");
}

/// <summary>One gpt-oss layer: x + o(attn(norm(x)), sinks), then h + moe(post_norm(h)).</summary>
internal sealed class GptOssBlock : ILayerBlock
{
    private readonly IntPtr _attnNorm, _q, _k, _v, _output, _qBias, _kBias, _vBias, _outputBias, _sinks, _postNorm;
    private readonly IFeedForward _ffn;
    private readonly RopeSettings _rope;
    private readonly int _heads, _kvHeads, _headDim;
    private readonly float _eps, _scale;

    public LayerKv Kv { get; }

    private GptOssBlock(ModelInfo info, LayerKv kv, IntPtr[] w, IFeedForward ffn, RopeSettings rope)
    {
        (_attnNorm, _q, _k, _v, _output, _qBias, _kBias, _vBias, _outputBias, _sinks, _postNorm) =
            (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10]);
        _ffn = ffn;
        _rope = rope;
        _heads = info.HeadCount;
        _kvHeads = info.KvHeadCount;
        _headDim = info.HeadDim;
        _eps = info.RmsNormEps;
        _scale = 1f / MathF.Sqrt(info.HeadDim);
        Kv = kv;
    }

    public int GraphNodes(int segments) => 48 + 16 * segments + _ffn.GraphNodes;

    public static GptOssBlock Bind(GgufModel model, int layer, GptOssParameters p)
    {
        var i = model.Info;
        long embd = i.EmbeddingLength, q = (long)i.HeadDim * i.HeadCount, kv = (long)i.HeadDim * i.KvHeadCount;
        var pre = $"blk.{layer}.";
        IntPtr[] w =
        [
            model.Weight(pre + "attn_norm.weight", WeightUse.Plain, embd),
            model.Weight(pre + "attn_q.weight", WeightUse.MatMul, embd, q),
            model.Weight(pre + "attn_k.weight", WeightUse.MatMul, embd, kv),
            model.Weight(pre + "attn_v.weight", WeightUse.MatMul, embd, kv),
            model.Weight(pre + "attn_output.weight", WeightUse.MatMul, q, embd),
            model.Weight(pre + "attn_q.bias", WeightUse.Plain, q),
            model.Weight(pre + "attn_k.bias", WeightUse.Plain, kv),
            model.Weight(pre + "attn_v.bias", WeightUse.Plain, kv),
            model.Weight(pre + "attn_output.bias", WeightUse.Plain, embd),
            model.Weight(pre + "attn_sinks.weight", WeightUse.Plain, i.HeadCount),
            model.Weight(pre + "post_attention_norm.weight", WeightUse.Plain, embd),
        ];
        var settings = new MoeSettings(p.ExpertCount, p.ExpertUsedCount, ExpertGating.SoftmaxAfterTopK, Activation: ExpertActivation.SwigluOai);
        var ffn = MoeFeedForward.Bind(model, layer, embd, p.ExpertFeedForwardLength, settings);
        var sliding = p.IsSliding(layer);
        // get_rope_freq_base/scale: sliding layers use the _swa values, which gpt-oss sets to the global ones
        // (freq_base_swa may override the base); the scale is the file's YaRN 1/factor on every layer.
        var rope = new RopeSettings(i.HeadDim, RopeKind.NeoX, p.YarnOriginalContext, sliding ? p.SlidingFreqBase : i.RopeFreqBase,
            i.RopeFreqScale, p.ExtFactor, p.AttnFactor, p.BetaFast, p.BetaSlow);
        return new GptOssBlock(i, i.KvLayers[layer], w, ffn, rope);
    }

    public IntPtr Build(SpanGraph g, int spanLayer, IntPtr input)
    {
        var ctx = g.Context;
        var rows = g.Rows;
        var normed = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, input, _eps), _attnNorm);
        var q = Ggml.ggml_add(ctx, Ggml.ggml_mul_mat(ctx, _q, normed), _qBias);
        var k = Ggml.ggml_add(ctx, Ggml.ggml_mul_mat(ctx, _k, normed), _kBias);
        var v = Ggml.ggml_add(ctx, Ggml.ggml_mul_mat(ctx, _v, normed), _vBias);
        q = g.Rope(Ggml.ggml_reshape_3d(ctx, q, _headDim, _heads, rows), _rope);
        k = g.Rope(Ggml.ggml_reshape_3d(ctx, k, _headDim, _kvHeads, rows), _rope);
        var attention = g.Attention(spanLayer, new AttentionInputs(q, k, v, _heads, _kvHeads, _headDim, _headDim, _scale, Sinks: _sinks));

        var cur = g.PruneRows(spanLayer, Ggml.ggml_add(ctx, Ggml.ggml_mul_mat(ctx, _output, attention), _outputBias));
        var ffnInput = Ggml.ggml_add(ctx, cur, g.PruneRows(spanLayer, input));
        normed = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, ffnInput, _eps), _postNorm);
        return Ggml.ggml_add(ctx, _ffn.Build(g, normed), ffnInput);
    }
}
