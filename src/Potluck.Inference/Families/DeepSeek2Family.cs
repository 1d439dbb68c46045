using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Families;

/// <summary>
/// DeepSeek V2/V3 hyper-parameters as llama.cpp's deepseek2 loader reads them.
/// </summary>
/// <param name="QueryLoraRank">attention.q_lora_rank: Q through attn_q_a → norm → attn_q_b when above 0, else a direct attn_q.</param>
/// <param name="KvLoraRank">attention.kv_lora_rank: width of the compressed KV latent.</param>
/// <param name="KeyHeadDim">Q/K head size after decompression (key_length_mla, or key_length in legacy files): nope + rope.</param>
/// <param name="ValueHeadDim">V head size after decompression (value_length_mla, or value_length in legacy files).</param>
/// <param name="RopeHeadDim">rope.dimension_count: the rotated part of each Q/K head.</param>
/// <param name="Latent">
/// True for files with split attn_k_b/attn_v_b (converters since 2025): llama.cpp absorbs them into Q and the output
/// and caches only the normed latent plus the rotated key (MQA); false for legacy attn_kv_b files (plain MHA cache).
/// </param>
/// <param name="LeadingDenseLayers">leading_dense_block_count: layers before the first expert layer.</param>
/// <param name="KqScale">The attention scale llama.cpp derives: mscale² / √KeyHeadDim (mscale from YaRN's log multiplier).</param>
/// <param name="RopeAttnFactor">attn_factor passed to RoPE (cancels ggml's YaRN magnitude correction).</param>
/// <param name="RopeOriginalContext">n_ctx_orig_yarn: rope.scaling.original_context_length, else context_length.</param>
internal sealed record DeepSeek2Parameters(
    int QueryLoraRank,
    int KvLoraRank,
    int KeyHeadDim,
    int ValueHeadDim,
    int RopeHeadDim,
    bool Latent,
    int LeadingDenseLayers,
    int ExpertCount,
    int ExpertUsedCount,
    int ExpertFeedForwardLength,
    int SharedExpertCount,
    ExpertGating Gating,
    bool NormalizeExpertWeights,
    float ExpertWeightsScale,
    int ExpertGroupCount,
    int ExpertGroupsUsed,
    float KqScale,
    float RopeAttnFactor,
    int RopeOriginalContext) : FamilyParameters, IExpertCounts
{
    /// <summary>attention.temperature_scale (Mistral Large 3's per-position Q scaling): not run by the engine, refused when set.</summary>
    public float AttentionTemperatureScale { get; init; }
    /// <summary>nextn_predict_layers: multi-token-prediction blocks appended to block_count; refused (the trunk would count them).</summary>
    public int NextTokenPredictionLayers { get; init; }

    public int NopeHeadDim => KeyHeadDim - RopeHeadDim;

    /// <summary>Width of one cached latent row: the normed compressed KV followed by the rotated shared key.</summary>
    public int LatentWidth => KvLoraRank + RopeHeadDim;

    public bool IsExpertLayer(int layer) => layer >= LeadingDenseLayers;
}

/// <summary>
/// deepseek2 (DeepSeek V2, V2-Lite, V2.5, V3, R1 and other files converted to this architecture): multi-head latent attention with
/// YaRN RoPE on a separate rotated slice, leading dense layers, then expert layers with a shared expert, softmax or
/// sigmoid gating, an optional selection bias and group-limited routing. Mirrors llama.cpp's llm_build_deepseek2.
/// </summary>
internal sealed class DeepSeek2Family : ModelFamily
{
    public override string Architecture => "deepseek2";
    public override RopeKind Rope => RopeKind.Normal;

    internal override FamilyParameters ReadParameters(GgufMetadata m, ModelInfo common)
    {
        var kvLora = m.Int("attention.kv_lora_rank", 0);
        var keyMla = m.Int("attention.key_length_mla", 0);
        var valueMla = m.Int("attention.value_length_mla", 0);
        // llama.cpp's is_mla(): both *_mla lengths set means the split, absorbed layout; otherwise key/value_length are the MHA sizes.
        var latent = keyMla != 0 && valueMla != 0;
        var keyHead = latent ? keyMla : common.HeadDim;
        var valueHead = latent ? valueMla : m.Int("attention.value_length", common.HeadDim);
        var rope = m.Int("rope.dimension_count", common.HeadDim);

        var gating = m.Int("expert_gating_func", 0) switch
        {
            2 => ExpertGating.Sigmoid,
            3 => ExpertGating.SoftmaxAfterTopK,
            // 0 (unset) is softmax for older V2/V2.5 files, as llama.cpp defaults it.
            _ => ExpertGating.Softmax,
        };

        var (ropeAttnFactor, kqScale) = AttentionScales(common, m.Float("rope.scaling.yarn_log_multiplier", 0f),
            m.Float("rope.scaling.attn_factor", 1f), keyHead);
        return new DeepSeek2Parameters(
            QueryLoraRank: m.Int("attention.q_lora_rank", 0),
            KvLoraRank: kvLora,
            KeyHeadDim: keyHead,
            ValueHeadDim: valueHead,
            RopeHeadDim: rope,
            Latent: latent,
            LeadingDenseLayers: m.Int("leading_dense_block_count", 0),
            ExpertCount: m.Int("expert_count", 0),
            ExpertUsedCount: m.Int("expert_used_count", 0),
            ExpertFeedForwardLength: m.Int("expert_feed_forward_length", 0),
            SharedExpertCount: m.Int("expert_shared_count", 0),
            Gating: gating,
            NormalizeExpertWeights: m.Bool("expert_weights_norm", false),
            ExpertWeightsScale: m.Float("expert_weights_scale", 0f),
            ExpertGroupCount: m.Int("expert_group_count", 0),
            ExpertGroupsUsed: m.Int("expert_group_used_count", 0),
            KqScale: kqScale,
            RopeAttnFactor: ropeAttnFactor,
            RopeOriginalContext: m.Int("rope.scaling.original_context_length", 0) is > 0 and var o ? o : common.ContextLength)
        {
            AttentionTemperatureScale = m.Float("attention.temperature_scale", 0f),
            NextTokenPredictionLayers = m.Int("nextn_predict_layers", 0),
        };
    }

    /// <summary>
    /// RoPE's attn_factor and the attention scale, derived as llama.cpp does: the context turns YaRN's factor and
    /// log multiplier into yarn_attn_factor (cancelling ggml's own 1 + 0.1·ln(factor) magnitude correction), and the
    /// deepseek2 graph undoes that to pre-scale kq_scale by mscale² instead (discussions/7416, PR 17945).
    /// </summary>
    internal static (float RopeAttnFactor, float KqScale) AttentionScales(ModelInfo info, float fileLogMultiplier, float ropeAttnFactor, int keyHeadDim)
    {
        var freqScale = info.RopeFreqScale;
        var yarn = info.RopeScaling == RopeScaling.Yarn;
        // The converter writes 0.1 × mscale_all_dim; llama.cpp divides the factor back out.
        var logMul = fileLogMultiplier / 0.1f;
        var attnFactor = 1f;
        if (yarn)
        {
            static float MScale(float scale, float mscale) => scale <= 1f ? 1f : 0.1f * mscale * MathF.Log(scale) + 1f;
            var factor = 1f / freqScale;
            // With a log multiplier llama.cpp takes deepseek2's mscale equal to mscale_all_dim, so get_mscale's ratio is 1.
            attnFactor = logMul != 0f ? 1f : MScale(factor, 1f);
            attnFactor *= 1f / (1f + 0.1f * MathF.Log(factor));
        }
        attnFactor *= ropeAttnFactor;

        var original = attnFactor * (1f + 0.1f * MathF.Log(1f / freqScale));
        var m = original * (1f + 0.1f * logMul * MathF.Log(1f / freqScale));
        return (attnFactor, m * m / MathF.Sqrt(keyHeadDim));
    }

    internal override void Validate(ModelInfo info)
    {
        if (info.Parameters is not DeepSeek2Parameters p) throw new GgufFormatException(info.Path, "deepseek2 hyper-parameters missing");
        void Require(bool ok, string what)
        {
            if (!ok) throw new GgufFormatException(info.Path, what);
        }
        Require(p.KvLoraRank > 0, "deepseek2.attention.kv_lora_rank must be positive");
        Require(p.RopeHeadDim > 0 && p.RopeHeadDim % 2 == 0, $"rope dimension {p.RopeHeadDim} must be positive and even");
        Require(p.NopeHeadDim > 0, $"key head size {p.KeyHeadDim} must exceed the rope dimension {p.RopeHeadDim}");
        Require(p.ValueHeadDim > 0, "value head size must be positive");
        Require(p.Latent ? info.KvHeadCount == 1 : info.KvHeadCount == info.HeadCount,
            p.Latent ? "latent-attention deepseek2 files cache one KV head (head_count_kv 1)"
                     : "legacy deepseek2 files (attn_kv_b) need head_count_kv == head_count");
        Require(!p.Latent || info.HeadDim == p.LatentWidth, $"key_length {info.HeadDim} must be kv_lora_rank + rope dimension ({p.LatentWidth})");
        Require(p.LeadingDenseLayers >= 0, "leading_dense_block_count must not be negative");
        Require(p.AttentionTemperatureScale == 0f, "deepseek2 attention temperature scaling (attention.temperature_scale) is not supported");
        Require(p.NextTokenPredictionLayers == 0, "deepseek2 files with multi-token-prediction layers (nextn_predict_layers) are not supported");
        if (p.LeadingDenseLayers < info.LayerCount)
        {
            Require(p.ExpertCount > 0 && p.ExpertUsedCount > 0 && p.ExpertUsedCount <= p.ExpertCount,
                $"expert layers need 1 ≤ expert_used_count ({p.ExpertUsedCount}) ≤ expert_count ({p.ExpertCount})");
            Require(p.ExpertFeedForwardLength > 0, "expert_feed_forward_length must be positive");
            Require(p.SharedExpertCount >= 0, "expert_shared_count must not be negative");
            if (p.ExpertGroupCount > 1)
                Require(p.ExpertCount % p.ExpertGroupCount == 0 && p.ExpertGroupsUsed > 0 && p.ExpertGroupsUsed < p.ExpertGroupCount,
                    $"{p.ExpertCount} experts cannot form {p.ExpertGroupCount} groups with {p.ExpertGroupsUsed} used");
        }
    }

    public override LayerKv DescribeKv(ModelInfo info, int layer)
    {
        var p = (DeepSeek2Parameters)info.Parameters;
        // The absorbed form caches the latent row once per position and reads V as its first kv_lora_rank columns.
        return p.Latent
            ? new LayerKv(p.LatentWidth, p.KvLoraRank, Window: null, ValueSharesKey: true)
            : new LayerKv(p.KeyHeadDim * info.HeadCount, p.ValueHeadDim * info.HeadCount, Window: null);
    }

    internal override ILayerBlock BindLayer(GgufModel model, int layer) => DeepSeek2Block.Bind(model, layer, DescribeKv(model.Info, layer));
}

/// <summary>One deepseek2 layer: x + wo · MLA(norm(x)), then h + ffn(norm(h)) with a dense or expert feed-forward.</summary>
internal sealed class DeepSeek2Block : ILayerBlock
{
    private const nuint F32 = sizeof(float);

    private readonly DeepSeek2Parameters _p;
    private readonly IntPtr _attnNorm, _qA, _qANorm, _qB, _q, _kvA, _kvANorm, _kB, _vB, _kvB, _output, _ffnNorm;
    private readonly IFeedForward _ffn;
    private readonly RopeSettings _rope;
    private readonly int _heads;
    private readonly float _eps;

    public LayerKv Kv { get; }

    private DeepSeek2Block(ModelInfo info, DeepSeek2Parameters p, IntPtr[] w, IFeedForward ffn, LayerKv kv)
    {
        (_attnNorm, _qA, _qANorm, _qB, _q, _kvA, _kvANorm, _kB, _vB, _kvB, _output, _ffnNorm) =
            (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11]);
        _p = p;
        _ffn = ffn;
        _heads = info.HeadCount;
        _eps = info.RmsNormEps;
        Kv = kv;
        var yarn = info.RopeScaling == RopeScaling.Yarn;
        _rope = new RopeSettings(p.RopeHeadDim, RopeKind.Normal, p.RopeOriginalContext, info.RopeFreqBase, info.RopeFreqScale,
            ExtFactor: yarn ? 1f : 0f, AttnFactor: p.RopeAttnFactor);
    }

    public int GraphNodes(int segments) => 64 + 16 * segments + _ffn.GraphNodes;

    public static DeepSeek2Block Bind(GgufModel model, int layer, LayerKv kv)
    {
        var i = model.Info;
        var p = (DeepSeek2Parameters)i.Parameters;
        long embd = i.EmbeddingLength, heads = i.HeadCount, qWidth = heads * p.KeyHeadDim;
        var pre = $"blk.{layer}.";
        var lora = p.QueryLoraRank > 0;
        IntPtr[] w =
        [
            model.Weight(pre + "attn_norm.weight", WeightUse.Plain, embd),
            lora ? model.Weight(pre + "attn_q_a.weight", WeightUse.MatMul, embd, p.QueryLoraRank) : IntPtr.Zero,
            lora ? model.Weight(pre + "attn_q_a_norm.weight", WeightUse.Plain, p.QueryLoraRank) : IntPtr.Zero,
            lora ? model.Weight(pre + "attn_q_b.weight", WeightUse.MatMul, p.QueryLoraRank, qWidth) : IntPtr.Zero,
            lora ? IntPtr.Zero : model.Weight(pre + "attn_q.weight", WeightUse.MatMul, embd, qWidth),
            model.Weight(pre + "attn_kv_a_mqa.weight", WeightUse.MatMul, embd, p.LatentWidth),
            model.Weight(pre + "attn_kv_a_norm.weight", WeightUse.Plain, p.KvLoraRank),
            // 3-D per-head matrices: bound as plain (never repacked), used by batched mul_mat.
            p.Latent ? model.Weight(pre + "attn_k_b.weight", WeightUse.Plain, p.NopeHeadDim, p.KvLoraRank, heads) : IntPtr.Zero,
            p.Latent ? model.Weight(pre + "attn_v_b.weight", WeightUse.Plain, p.KvLoraRank, p.ValueHeadDim, heads) : IntPtr.Zero,
            p.Latent ? IntPtr.Zero : model.Weight(pre + "attn_kv_b.weight", WeightUse.MatMul, p.KvLoraRank, heads * (p.NopeHeadDim + p.ValueHeadDim)),
            model.Weight(pre + "attn_output.weight", WeightUse.MatMul, heads * p.ValueHeadDim, embd),
            model.Weight(pre + "ffn_norm.weight", WeightUse.Plain, embd),
        ];
        IFeedForward ffn = p.IsExpertLayer(layer) ? BindExperts(model, layer, p) : DenseFeedForward.Bind(model, layer, embd, i.FeedForwardLength);
        return new DeepSeek2Block(i, p, w, ffn, kv);
    }

    /// <summary>Routed experts plus the always-on shared expert (n_ff_exp × expert_shared_count wide), as build_moe_ffn.</summary>
    private static MoeFeedForward BindExperts(GgufModel model, int layer, DeepSeek2Parameters p)
    {
        var embd = model.Info.EmbeddingLength;
        // llama.cpp scales the chosen weights whenever expert_weights_scale is non-zero (scale_w = w_scale != 0).
        var settings = new MoeSettings(p.ExpertCount, p.ExpertUsedCount, p.Gating, p.NormalizeExpertWeights,
            p.ExpertWeightsScale, p.ExpertGroupCount, p.ExpertGroupsUsed);
        var shared = SharedExpert.Bind(model, layer, embd, (long)p.ExpertFeedForwardLength * p.SharedExpertCount);
        return MoeFeedForward.Bind(model, layer, embd, p.ExpertFeedForwardLength, settings, shared);
    }

    public IntPtr Build(SpanGraph g, int spanLayer, IntPtr input)
    {
        var ctx = g.Context;
        long rows = g.Rows, heads = _heads;
        var p = _p;
        var normed = Norm(ctx, input, _attnNorm);

        var q = _q != IntPtr.Zero
            ? Ggml.ggml_mul_mat(ctx, _q, normed)
            : Ggml.ggml_mul_mat(ctx, _qB, Norm(ctx, Ggml.ggml_mul_mat(ctx, _qA, normed), _qANorm));
        // Q per head is [nope | rope]: views of each part, the rotated one through RoPE.
        var qHead = (nuint)p.KeyHeadDim * F32;
        var qNope = Ggml.ggml_view_3d(ctx, q, p.NopeHeadDim, heads, rows, qHead, qHead * (nuint)heads, 0);
        var qPe = Ggml.ggml_view_3d(ctx, q, p.RopeHeadDim, heads, rows, qHead, qHead * (nuint)heads, (nuint)p.NopeHeadDim * F32);

        // kv_a_mqa gives [latent | shared rotated key] per row.
        var kvPe = Ggml.ggml_mul_mat(ctx, _kvA, normed);
        var kvRow = (nuint)p.LatentWidth * F32;
        var kvCompressed = Ggml.ggml_view_2d(ctx, kvPe, p.KvLoraRank, rows, kvRow, 0);
        var kPe = Ggml.ggml_view_3d(ctx, kvPe, p.RopeHeadDim, 1, rows, kvRow, kvRow, (nuint)p.KvLoraRank * F32);

        qPe = g.Rope(qPe, _rope);
        kPe = g.Rope(kPe, _rope);
        kvCompressed = Norm(ctx, kvCompressed, _kvANorm);

        IntPtr attention;
        if (p.Latent)
        {
            // Absorb attn_k_b into Q: per head, q_nope [nope] → [kv_lora], so attention runs against the cached latent (MQA).
            var qNopePerHead = Ggml.ggml_permute(ctx, qNope, 0, 2, 1, 3); // [nope, rows, heads]
            var absorbed = Ggml.ggml_mul_mat(ctx, _kB, qNopePerHead); // [kv_lora, rows, heads]
            absorbed = Ggml.ggml_permute(ctx, absorbed, 0, 2, 1, 3); // [kv_lora, heads, rows]
            var qCur = Ggml.ggml_concat(ctx, absorbed, qPe, 0); // [kv_lora + rope, heads, rows]
            var kCur = Ggml.ggml_concat(ctx, Ggml.ggml_reshape_3d(ctx, kvCompressed, p.KvLoraRank, 1, rows), kPe, 0); // [kv_lora + rope, 1, rows]
            var latent = g.Attention(spanLayer, new AttentionInputs(qCur, kCur, IntPtr.Zero, _heads, 1, p.LatentWidth, p.KvLoraRank, p.KqScale));
            // Decompress each head's latent output through attn_v_b, as llama.cpp's flash path does (rows in dimension 1).
            var perHead = Ggml.ggml_permute(ctx, Ggml.ggml_reshape_3d(ctx, latent, p.KvLoraRank, heads, rows), 0, 2, 1, 3); // [kv_lora, rows, heads]
            var values = Ggml.ggml_mul_mat(ctx, _vB, perHead); // [v, rows, heads]
            values = Ggml.ggml_cont(ctx, Ggml.ggml_permute(ctx, values, 0, 2, 1, 3)); // [v, heads, rows]
            attention = Ggml.ggml_reshape_2d(ctx, values, (long)p.ValueHeadDim * heads, rows);
        }
        else
        {
            // Legacy attn_kv_b decompresses the latent into per-head [k_nope | v]; the rotated key is shared by all heads.
            var kv = Ggml.ggml_mul_mat(ctx, _kvB, kvCompressed); // [heads × (nope + v), rows]
            var kvHead = (nuint)(p.NopeHeadDim + p.ValueHeadDim) * F32;
            var kNope = Ggml.ggml_view_3d(ctx, kv, p.NopeHeadDim, heads, rows, kvHead, kvHead * (nuint)heads, 0);
            var vCur = Ggml.ggml_view_3d(ctx, kv, p.ValueHeadDim, heads, rows, kvHead, kvHead * (nuint)heads, (nuint)p.NopeHeadDim * F32);
            vCur = Ggml.ggml_cont(ctx, vCur);
            var qCur = Ggml.ggml_concat(ctx, qNope, qPe, 0); // [key, heads, rows]
            var kCur = Ggml.ggml_concat(ctx, kNope, Ggml.ggml_repeat(ctx, kPe, qPe), 0);
            attention = g.Attention(spanLayer, new AttentionInputs(qCur, kCur, Ggml.ggml_reshape_2d(ctx, vCur, (long)p.ValueHeadDim * heads, rows),
                _heads, _heads, p.KeyHeadDim, p.ValueHeadDim, p.KqScale));
        }

        var cur = g.PruneRows(spanLayer, Ggml.ggml_mul_mat(ctx, _output, attention));
        var ffnInput = Ggml.ggml_add(ctx, cur, g.PruneRows(spanLayer, input));
        normed = Norm(ctx, ffnInput, _ffnNorm);
        return Ggml.ggml_add(ctx, _ffn.Build(g, normed), ffnInput);
    }

    private IntPtr Norm(IntPtr ctx, IntPtr x, IntPtr weight) => Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, x, _eps), weight);
}
