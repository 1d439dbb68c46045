using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Families;

/// <summary>Phi-3's hyper-parameters as llama.cpp's phi3 loader and context derive them.</summary>
/// <param name="RopeDimensions">rope.dimension_count (Phi-3 may rotate part of each head).</param>
/// <param name="OriginalContext">rope.scaling.original_context_length, else context_length (llama.cpp's n_ctx_orig_yarn).</param>
/// <param name="AttentionFactor">
/// rope.scaling.attn_factor (1 when absent): the LongRoPE magnitude the converter derives,
/// √(1 + ln(context / original) / ln(original)); llama.cpp multiplies it into RoPE's attn_factor.
/// </param>
public sealed record Phi3Parameters(int RopeDimensions, int OriginalContext, float AttentionFactor) : FamilyParameters;

/// <summary>
/// phi3: fused QKV and gate-up projections, NeoX RoPE with LongRoPE frequency factors (rope_factors_long when the
/// session's context exceeds the original one, else rope_factors_short, as llama.cpp chooses by n_ctx_per_seq)
/// and Q pre-scaled by 1/√head_dim. The file's sliding window is ignored, as llama.cpp b10221 disables Phi SWA.
/// </summary>
internal sealed class Phi3Family : ModelFamily
{
    public override string Architecture => "phi3";
    public override RopeKind Rope => RopeKind.NeoX;

    internal override FamilyParameters ReadParameters(GgufMetadata metadata, ModelInfo common)
    {
        var original = metadata.Int("rope.scaling.original_context_length") ?? 0;
        return new Phi3Parameters(
            metadata.Int("rope.dimension_count", common.HeadDim),
            original > 0 ? original : common.ContextLength,
            metadata.Float("rope.scaling.attn_factor", 1f));
    }

    internal override void Validate(ModelInfo info)
    {
        var p = (Phi3Parameters)info.Parameters;
        if (p.RopeDimensions <= 0 || p.RopeDimensions > info.HeadDim || p.RopeDimensions % 2 != 0)
            throw new GgufFormatException(info.Path, $"phi3 rope.dimension_count {p.RopeDimensions} must be even and within the head size {info.HeadDim}");
        if (!(p.AttentionFactor > 0f) || !float.IsFinite(p.AttentionFactor))
            throw new GgufFormatException(info.Path, $"phi3 rope.scaling.attn_factor {p.AttentionFactor} must be positive");
        // YaRN would change the attention factor llama.cpp derives (get_mscale); Phi-3 converters never write it.
        if (info.RopeScaling == RopeScaling.Yarn)
            throw new GgufFormatException(info.Path, "phi3 with rope.scaling.type yarn is not supported");
        if ((long)info.HeadDim * info.HeadCount != info.EmbeddingLength)
            throw new GgufFormatException(info.Path, $"phi3 needs head_count × head size = embedding_length, got {info.HeadCount} × {info.HeadDim} ≠ {info.EmbeddingLength}");
    }

    // Phi SWA is disabled in llama.cpp ("results might be suboptimal"): every layer attends globally.
    public override LayerKv DescribeKv(ModelInfo info, int layer) =>
        new(info.HeadDim * info.KvHeadCount, info.HeadDim * info.KvHeadCount, Window: null);

    internal override ILayerBlock BindLayer(GgufModel model, int layer) => Phi3Block.Bind(model, layer);
}

/// <summary>One Phi-3 layer: x + attn(norm(x)), then h + down(swiglu(up(norm(h)))) with gate and up fused.</summary>
internal sealed class Phi3Block : ILayerBlock
{
    private readonly IntPtr _attnNorm, _qkv, _q, _k, _v, _output, _ffnNorm, _up, _down;
    private readonly RopeSettings _shortRope, _longRope;
    private readonly int _originalContext;
    private readonly Func<int, RopeSettings> _ropeFor;
    private readonly int _heads, _kvHeads, _headDim;
    private readonly float _eps, _qScale;

    public LayerKv Kv { get; }

    private Phi3Block(ModelInfo info, IntPtr[] w, RopeSettings shortRope, RopeSettings longRope, int originalContext)
    {
        (_attnNorm, _qkv, _q, _k, _v, _output, _ffnNorm, _up, _down) = (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]);
        _shortRope = shortRope;
        _longRope = longRope;
        _originalContext = originalContext;
        _ropeFor = capacity => capacity > _originalContext ? _longRope : _shortRope;
        _heads = info.HeadCount;
        _kvHeads = info.KvHeadCount;
        _headDim = info.HeadDim;
        _eps = info.RmsNormEps;
        _qScale = 1f / MathF.Sqrt(info.HeadDim);
        Kv = new LayerKv(_headDim * _kvHeads, _headDim * _kvHeads, null);
    }

    public int GraphNodes(int segments) => 48 + 24 * segments;

    public static Phi3Block Bind(GgufModel model, int layer)
    {
        var i = model.Info;
        var p = (Phi3Parameters)i.Parameters;
        long embd = i.EmbeddingLength, kv = (long)i.HeadDim * i.KvHeadCount, ff = i.FeedForwardLength;
        var n = $"blk.{layer}.";
        // Converted files fuse Q, K and V; llama.cpp also loads them separate (create_tensor_qkv).
        var qkv = model.OptionalWeight(n + "attn_qkv.weight", WeightUse.MatMul, embd, embd + 2 * kv);
        IntPtr[] w =
        [
            model.Weight(n + "attn_norm.weight", WeightUse.Plain, embd),
            qkv,
            qkv == IntPtr.Zero ? model.Weight(n + "attn_q.weight", WeightUse.MatMul, embd, embd) : IntPtr.Zero,
            qkv == IntPtr.Zero ? model.Weight(n + "attn_k.weight", WeightUse.MatMul, embd, kv) : IntPtr.Zero,
            qkv == IntPtr.Zero ? model.Weight(n + "attn_v.weight", WeightUse.MatMul, embd, kv) : IntPtr.Zero,
            model.Weight(n + "attn_output.weight", WeightUse.MatMul, embd, embd),
            model.Weight(n + "ffn_norm.weight", WeightUse.Plain, embd),
            model.Weight(n + "ffn_up.weight", WeightUse.MatMul, embd, 2 * ff),
            model.Weight(n + "ffn_down.weight", WeightUse.MatMul, ff, embd),
        ];
        // One tensor pair for the model (llama.cpp duplicates it per layer); either may be absent (no LongRoPE).
        var longFactors = model.OptionalWeight("rope_factors_long.weight", WeightUse.Plain, p.RopeDimensions / 2);
        var shortFactors = model.OptionalWeight("rope_factors_short.weight", WeightUse.Plain, p.RopeDimensions / 2);
        var rope = new RopeSettings(p.RopeDimensions, RopeKind.NeoX, p.OriginalContext, i.RopeFreqBase, i.RopeFreqScale,
            AttnFactor: p.AttentionFactor);
        return new Phi3Block(i, w, rope with { FreqFactors = shortFactors }, rope with { FreqFactors = longFactors }, p.OriginalContext);
    }

    public IntPtr Build(SpanGraph g, int spanLayer, IntPtr input)
    {
        var ctx = g.Context;
        var rows = g.Rows;
        var normed = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, input, _eps), _attnNorm);
        IntPtr q, k, v;
        var qWidth = (long)_headDim * _heads;
        var kvWidth = (long)_headDim * _kvHeads;
        if (_qkv != IntPtr.Zero)
        {
            // Q, K and V are column ranges of one product (llama.cpp's views of the fused result).
            var fused = Ggml.ggml_mul_mat(ctx, _qkv, normed);
            var row = (nuint)(qWidth + 2 * kvWidth) * sizeof(float);
            var head = (nuint)_headDim * sizeof(float);
            q = Ggml.ggml_view_3d(ctx, fused, _headDim, _heads, rows, head, row, 0);
            k = Ggml.ggml_view_3d(ctx, fused, _headDim, _kvHeads, rows, head, row, (nuint)qWidth * sizeof(float));
            v = Ggml.ggml_cont_2d(ctx, Ggml.ggml_view_2d(ctx, fused, kvWidth, rows, row, (nuint)(qWidth + kvWidth) * sizeof(float)), kvWidth, rows);
        }
        else
        {
            q = Ggml.ggml_reshape_3d(ctx, Ggml.ggml_mul_mat(ctx, _q, normed), _headDim, _heads, rows);
            k = Ggml.ggml_reshape_3d(ctx, Ggml.ggml_mul_mat(ctx, _k, normed), _headDim, _kvHeads, rows);
            v = Ggml.ggml_mul_mat(ctx, _v, normed);
        }
        q = RopeRows(g, q, _heads);
        k = RopeRows(g, k, _kvHeads);
        // llama.cpp scales Q itself and attends with scale 1.
        q = Ggml.ggml_scale(ctx, q, _qScale);
        var attention = g.Attention(spanLayer, new AttentionInputs(q, k, v, _heads, _kvHeads, _headDim, _headDim, 1f));

        var cur = g.PruneRows(spanLayer, Ggml.ggml_mul_mat(ctx, _output, attention));
        var ffnInput = Ggml.ggml_add(ctx, cur, g.PruneRows(spanLayer, input));
        normed = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, ffnInput, _eps), _ffnNorm);
        // ffn_up holds gate then up: swiglu gates the first half with the second.
        var ffn = Ggml.ggml_mul_mat(ctx, _down, Ggml.ggml_swiglu(ctx, Ggml.ggml_mul_mat(ctx, _up, normed)));
        return Ggml.ggml_add(ctx, ffnInput, ffn);
    }

    /// <summary>RoPE with the session's factors; a fused view is made contiguous first where segments split it.</summary>
    private IntPtr RopeRows(SpanGraph g, IntPtr t, int heads)
    {
        if (g.SegmentCount > 1 && _shortRope.FreqFactors != _longRope.FreqFactors)
            t = Ggml.ggml_cont_3d(g.Context, t, _headDim, heads, g.Rows);
        return g.Rope(t, _headDim, heads, _ropeFor);
    }
}
