using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Families;

/// <summary>Gemma 3's hyper-parameters as llama.cpp's gemma3 loader derives them.</summary>
/// <param name="SlidingWindow">attention.sliding_window; null (or 0) means every layer attends globally.</param>
/// <param name="SlidingWindowPattern">Every how-many-th layer is global: attention.sliding_window_pattern, 6 when absent.</param>
/// <param name="SlidingRopeBase">RoPE base of the sliding-window layers: rope.freq_base_swa, 10000 when absent (global layers use rope.freq_base).</param>
/// <param name="SlidingRopeScale">RoPE frequency scale of the sliding-window layers (1; global layers use the file's linear scale).</param>
/// <param name="AttentionScale">Scale applied to Q before attention: 1/√head_dim, or 1/√(n_embd/n_head) for the 62-layer (27B) size.</param>
/// <param name="RopeDimensions">rope.dimension_count.</param>
/// <param name="FinalLogitSoftcap">final_logit_softcapping, 0 when absent (no cap).</param>
public sealed record Gemma3Parameters(
    int? SlidingWindow, int SlidingWindowPattern, float SlidingRopeBase, float SlidingRopeScale, float AttentionScale,
    int RopeDimensions, float FinalLogitSoftcap) : FamilyParameters
{
    /// <summary>llama_hparams::set_swa_pattern(n): layer il slides unless il % n == n − 1.</summary>
    public bool IsSliding(int layer) => SlidingWindow is > 0 && SlidingWindowPattern > 0 && layer % SlidingWindowPattern < SlidingWindowPattern - 1;
}

/// <summary>
/// gemma3: embeddings scaled by √n_embd, pre- and post-norms around attention and the GELU-gated feed-forward,
/// per-head Q/K RMS norms, interleaved sliding-window (RoPE base 10000) and global layers, Q pre-scaled before
/// attention. llama.cpp's converter stores Gemma's RMS-norm weights with the +1 already added, so norms are a
/// plain multiply here.
/// </summary>
internal sealed class Gemma3Family : ModelFamily
{
    /// <summary>The loader's period when the file has no attention.sliding_window_pattern: five sliding-window layers, then one global.</summary>
    private const int DefaultSlidingWindowPattern = 6;
    private const int Layers27B = 62;

    public override string Architecture => "gemma3";
    public override RopeKind Rope => RopeKind.NeoX;

    internal override FamilyParameters ReadParameters(GgufMetadata metadata, ModelInfo common)
    {
        var window = metadata.Int("attention.sliding_window");
        var scaleDim = common.LayerCount == Layers27B && common.HeadCount > 0
            ? (float)(common.EmbeddingLength / common.HeadCount)
            : common.HeadDim;
        return new Gemma3Parameters(
            window is > 0 ? window : null,
            metadata.Int("attention.sliding_window_pattern") ?? DefaultSlidingWindowPattern,
            // b10221 reads both optional keys: files with them change llama.cpp's output (checked against the oracle).
            SlidingRopeBase: metadata.Float("rope.freq_base_swa", 10000f),
            SlidingRopeScale: 1f,
            AttentionScale: 1f / MathF.Sqrt(scaleDim),
            RopeDimensions: metadata.Int("rope.dimension_count", common.HeadDim),
            FinalLogitSoftcap: metadata.Float("final_logit_softcapping", 0f));
    }

    internal override void Validate(ModelInfo info)
    {
        var p = (Gemma3Parameters)info.Parameters;
        if (!float.IsFinite(p.FinalLogitSoftcap) || !(p.SlidingRopeBase > 0f) || !float.IsFinite(p.SlidingRopeBase))
            throw new GgufFormatException(info.Path, "gemma3 final_logit_softcapping and rope.freq_base_swa must be finite (the base positive)");
        if (p.SlidingWindowPattern <= 0)
            throw new GgufFormatException(info.Path, $"gemma3 attention.sliding_window_pattern {p.SlidingWindowPattern} must be positive");
        if (p.RopeDimensions <= 0 || p.RopeDimensions > info.HeadDim || p.RopeDimensions % 2 != 0)
            throw new GgufFormatException(info.Path, $"gemma3 rope.dimension_count {p.RopeDimensions} must be even and within the head size {info.HeadDim}");
    }

    public override LayerKv DescribeKv(ModelInfo info, int layer)
    {
        var p = (Gemma3Parameters)info.Parameters;
        var width = info.HeadDim * info.KvHeadCount;
        return new LayerKv(width, width, p.IsSliding(layer) ? p.SlidingWindow : null);
    }

    internal override ILayerBlock BindLayer(GgufModel model, int layer) => Gemma3Block.Bind(model, layer, DescribeKv(model.Info, layer));

    public override HeadTraits Head(ModelInfo info)
    {
        var p = (Gemma3Parameters)info.Parameters;
        return new HeadTraits(EmbeddingScale: MathF.Sqrt(info.EmbeddingLength), FinalLogitSoftcap: Math.Max(0f, p.FinalLogitSoftcap));
    }
}

/// <summary>One Gemma 3 layer: h = x + post_norm(attn(norm(x))), then h + post_norm(ffn(norm(h))).</summary>
internal sealed class Gemma3Block : ILayerBlock
{
    private readonly IntPtr _attnNorm, _q, _k, _v, _output, _qNorm, _kNorm, _attnPostNorm, _ffnNorm, _ffnPostNorm;
    private readonly DenseFeedForward _ffn;
    private readonly RopeSettings _rope;
    private readonly int _heads, _kvHeads, _headDim;
    private readonly float _eps, _qScale;

    public LayerKv Kv { get; }

    private Gemma3Block(ModelInfo info, IntPtr[] w, DenseFeedForward ffn, RopeSettings rope, float qScale, LayerKv kv)
    {
        (_attnNorm, _q, _k, _v, _output, _qNorm, _kNorm, _attnPostNorm, _ffnNorm, _ffnPostNorm) =
            (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9]);
        _ffn = ffn;
        _rope = rope;
        _heads = info.HeadCount;
        _kvHeads = info.KvHeadCount;
        _headDim = info.HeadDim;
        _eps = info.RmsNormEps;
        _qScale = qScale;
        Kv = kv;
    }

    public int GraphNodes(int segments) => 56 + 16 * segments + _ffn.GraphNodes;

    public static Gemma3Block Bind(GgufModel model, int layer, LayerKv kv)
    {
        var i = model.Info;
        var p = (Gemma3Parameters)i.Parameters;
        long embd = i.EmbeddingLength, q = (long)i.HeadDim * i.HeadCount, kvWidth = (long)i.HeadDim * i.KvHeadCount, ff = i.FeedForwardLength;
        var n = $"blk.{layer}.";
        IntPtr[] w =
        [
            model.Weight(n + "attn_norm.weight", WeightUse.Plain, embd),
            model.Weight(n + "attn_q.weight", WeightUse.MatMul, embd, q),
            model.Weight(n + "attn_k.weight", WeightUse.MatMul, embd, kvWidth),
            model.Weight(n + "attn_v.weight", WeightUse.MatMul, embd, kvWidth),
            model.Weight(n + "attn_output.weight", WeightUse.MatMul, q, embd),
            model.Weight(n + "attn_q_norm.weight", WeightUse.Plain, i.HeadDim),
            model.Weight(n + "attn_k_norm.weight", WeightUse.Plain, i.HeadDim),
            model.Weight(n + "post_attention_norm.weight", WeightUse.Plain, embd),
            model.Weight(n + "ffn_norm.weight", WeightUse.Plain, embd),
            model.Weight(n + "post_ffw_norm.weight", WeightUse.Plain, embd),
        ];
        var ffn = DenseFeedForward.Bind(model, layer, embd, ff, DenseFeedForward.Activation.Gelu);
        // Sliding-window layers rotate with their own base and no scaling (get_rope_freq_base/scale per layer).
        var sliding = p.IsSliding(layer);
        var rope = new RopeSettings(p.RopeDimensions, RopeKind.NeoX, i.ContextLength,
            sliding ? p.SlidingRopeBase : i.RopeFreqBase, sliding ? p.SlidingRopeScale : i.RopeFreqScale,
            ExtFactor: i.RopeScaling == RopeScaling.Yarn ? 1f : 0f);
        return new Gemma3Block(i, w, ffn, rope, p.AttentionScale, kv);
    }

    public IntPtr Build(SpanGraph g, int spanLayer, IntPtr input)
    {
        var ctx = g.Context;
        var rows = g.Rows;
        var normed = Norm(ctx, input, _attnNorm);
        var q = Ggml.ggml_reshape_3d(ctx, Ggml.ggml_mul_mat(ctx, _q, normed), _headDim, _heads, rows);
        var k = Ggml.ggml_reshape_3d(ctx, Ggml.ggml_mul_mat(ctx, _k, normed), _headDim, _kvHeads, rows);
        var v = Ggml.ggml_mul_mat(ctx, _v, normed);
        q = g.Rope(Norm(ctx, q, _qNorm), _rope);
        k = g.Rope(Norm(ctx, k, _kNorm), _rope);
        // llama.cpp scales Q itself and attends with scale 1: the same product, but rounded where it rounds.
        q = Ggml.ggml_scale(ctx, q, _qScale);
        var attention = g.Attention(spanLayer, new AttentionInputs(q, k, v, _heads, _kvHeads, _headDim, _headDim, 1f));

        var cur = Norm(ctx, g.PruneRows(spanLayer, Ggml.ggml_mul_mat(ctx, _output, attention)), _attnPostNorm);
        var afterAttention = Ggml.ggml_add(ctx, cur, g.PruneRows(spanLayer, input));
        cur = Norm(ctx, _ffn.Build(g, Norm(ctx, afterAttention, _ffnNorm)), _ffnPostNorm);
        return Ggml.ggml_add(ctx, cur, afterAttention);
    }

    private IntPtr Norm(IntPtr ctx, IntPtr x, IntPtr weight) => Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, x, _eps), weight);
}
