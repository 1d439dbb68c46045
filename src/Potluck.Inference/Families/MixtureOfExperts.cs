using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Families;

/// <summary>How router logits become expert probabilities (llama_expert_gating_func_type).</summary>
internal enum ExpertGating
{
    /// <summary>softmax over all experts, then top-k (Mixtral, Qwen MoE, DeepSeek V2).</summary>
    Softmax,
    /// <summary>sigmoid per expert, then top-k (DeepSeek V3).</summary>
    Sigmoid,
    /// <summary>top-k on the raw logits, then softmax over the chosen ones (gpt-oss, "softmax_weight").</summary>
    SoftmaxAfterTopK,
}

/// <summary>The experts' gated activation.</summary>
internal enum ExpertActivation
{
    /// <summary>silu(gate) ⊙ up.</summary>
    Silu,
    /// <summary>gelu(gate) ⊙ up.</summary>
    Gelu,
    /// <summary>gpt-oss: clamped gate·σ(α·gate) ⊙ (clamped up + 1), with <see cref="MoeSettings.SwigluAlpha"/> and <see cref="MoeSettings.SwigluLimit"/>.</summary>
    SwigluOai,
}

/// <summary>
/// Routing and activation of one expert layer, as llama.cpp's build_moe_ffn takes them.
/// </summary>
/// <param name="ExpertCount">n_expert: experts in the layer's 3-D tensors.</param>
/// <param name="ExpertUsedCount">n_expert_used: experts each row uses.</param>
/// <param name="Gating">How logits become probabilities.</param>
/// <param name="NormalizeWeights">norm_w: divide the chosen weights by their sum.</param>
/// <param name="WeightsScale">w_scale: multiply the chosen weights (1 or 0 means none, as llama.cpp).</param>
/// <param name="GroupCount">n_expert_groups: group-limited routing when above 1 (DeepSeek V3).</param>
/// <param name="GroupsUsed">n_group_used: groups kept, each scored by the sum of its top 2 experts.</param>
/// <param name="Activation">The experts' activation.</param>
internal sealed record MoeSettings(
    int ExpertCount,
    int ExpertUsedCount,
    ExpertGating Gating = ExpertGating.Softmax,
    bool NormalizeWeights = false,
    float WeightsScale = 1f,
    int GroupCount = 0,
    int GroupsUsed = 0,
    ExpertActivation Activation = ExpertActivation.Silu)
{
    /// <summary>swiglu_oai alpha (gpt-oss: 1.702, a constant in llama.cpp).</summary>
    public float SwigluAlpha { get; init; } = 1.702f;
    /// <summary>swiglu_oai clamp limit (gpt-oss: 7.0, a constant in llama.cpp).</summary>
    public float SwigluLimit { get; init; } = 7f;
}

/// <summary>
/// The bound tensors of one expert layer. Zero means absent. Either <see cref="GateUp"/> (merged, [embd, 2·ff, n_expert])
/// or <see cref="Up"/> (+ optional <see cref="Gate"/>) is set.
/// </summary>
internal sealed record MoeWeights(IntPtr Router, IntPtr Up, IntPtr Gate, IntPtr Down)
{
    /// <summary>ffn_gate_inp.bias [n_expert]: added to the router logits (gpt-oss).</summary>
    public IntPtr RouterBias { get; init; }
    /// <summary>exp_probs_b.bias [n_expert]: added to the probabilities for selection only (DeepSeek V3).</summary>
    public IntPtr SelectionBias { get; init; }
    /// <summary>Per-expert biases [ff or embd, n_expert], applied with add_id (gpt-oss).</summary>
    public IntPtr UpBias { get; init; }
    public IntPtr GateBias { get; init; }
    public IntPtr DownBias { get; init; }
    /// <summary>Merged ffn_gate_up_exps.weight [embd, 2·ff, n_expert] and its bias [2·ff, n_expert].</summary>
    public IntPtr GateUp { get; init; }
    public IntPtr GateUpBias { get; init; }
}

/// <summary>
/// A shared (always-on) expert added to the routed experts' sum, optionally scaled per row by
/// sigmoid(<see cref="Gate"/> · x) (Qwen2-MoE's ffn_gate_inp_shexp).
/// </summary>
internal sealed record SharedExpert(IFeedForward FeedForward, IntPtr Gate = default)
{
    /// <summary>
    /// Binds blk.N.ffn_{gate,up,down}_shexp.weight ([embd → ff → embd]) and, when <paramref name="gated"/>,
    /// blk.N.ffn_gate_inp_shexp.weight [embd].
    /// </summary>
    public static SharedExpert Bind(GgufModel model, int layer, long embd, long ff, bool gated = false,
        DenseFeedForward.Activation activation = DenseFeedForward.Activation.Silu)
    {
        var p = $"blk.{layer}.";
        var ffn = new DenseFeedForward(
            model.Weight(p + "ffn_gate_shexp.weight", WeightUse.MatMul, embd, ff),
            model.Weight(p + "ffn_up_shexp.weight", WeightUse.MatMul, embd, ff),
            model.Weight(p + "ffn_down_shexp.weight", WeightUse.MatMul, ff, embd),
            activation);
        var gate = gated ? model.Weight(p + "ffn_gate_inp_shexp.weight", WeightUse.MatMul, embd) : IntPtr.Zero;
        return new SharedExpert(ffn, gate);
    }
}

/// <summary>
/// Mixture-of-experts feed-forward mirroring llama.cpp's build_moe_ffn: router logits → gating → top-k
/// (optionally biased and group-limited) → weights (optionally normalized and scaled) → gate/up expert
/// matmuls by id → activation → down by id → weighted sum over the used experts, plus an optional shared expert.
/// The op order follows llama.cpp's so results match bit for bit on CPU where the kernels allow.
/// </summary>
internal sealed class MoeFeedForward(MoeSettings settings, MoeWeights weights, SharedExpert? shared = null) : IFeedForward
{
    public MoeSettings Settings => settings;
    public MoeWeights Weights => weights;
    public SharedExpert? Shared => shared;

    public int GraphNodes => 48 + 2 * settings.ExpertUsedCount + (settings.GroupCount > 1 ? 16 : 0) + (shared is null ? 0 : shared.FeedForward.GraphNodes + 4);

    /// <summary>
    /// Binds blk.N.ffn_gate_inp.weight [embd, n_expert], ffn_{gate,up}_exps.weight [embd, ff, n_expert] (or the merged
    /// ffn_gate_up_exps.weight [embd, 2·ff, n_expert]), ffn_down_exps.weight [ff, embd, n_expert], and when present
    /// ffn_gate_inp.bias, exp_probs_b.bias and the per-expert .bias tensors. Expert tensors are bound zero-copy from
    /// the mapping, except where llama.cpp repacks them too (<see cref="GgufModel"/> probes 3-D weights with mul_mat_id:
    /// experts whose type a repacked CPU kernel takes are copied into that layout, as llama.cpp does; the Q4_K rows differ without it).
    /// </summary>
    public static MoeFeedForward Bind(GgufModel model, int layer, long embd, long expertFf, MoeSettings settings, SharedExpert? shared = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(settings.ExpertUsedCount, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(settings.ExpertUsedCount, settings.ExpertCount);
        var p = $"blk.{layer}.";
        long n = settings.ExpertCount;
        if (settings.GroupCount > 1 && (n % settings.GroupCount != 0 || settings.GroupsUsed < 1 || settings.GroupsUsed > settings.GroupCount))
            throw new ModelTensorException($"layer {layer}: {n} experts cannot form {settings.GroupCount} groups with {settings.GroupsUsed} used");
        var merged = model.HasTensor(p + "ffn_gate_up_exps.weight");
        var w = new MoeWeights(
            model.Weight(p + "ffn_gate_inp.weight", WeightUse.MatMul, embd, n),
            merged ? IntPtr.Zero : model.Weight(p + "ffn_up_exps.weight", WeightUse.MatMul, embd, expertFf, n),
            merged ? IntPtr.Zero : model.OptionalWeight(p + "ffn_gate_exps.weight", WeightUse.MatMul, embd, expertFf, n),
            model.Weight(p + "ffn_down_exps.weight", WeightUse.MatMul, expertFf, embd, n))
        {
            RouterBias = model.OptionalWeight(p + "ffn_gate_inp.bias", WeightUse.Plain, n),
            SelectionBias = model.OptionalWeight(p + "exp_probs_b.bias", WeightUse.Plain, n),
            UpBias = merged ? IntPtr.Zero : model.OptionalWeight(p + "ffn_up_exps.bias", WeightUse.Plain, expertFf, n),
            GateBias = merged ? IntPtr.Zero : model.OptionalWeight(p + "ffn_gate_exps.bias", WeightUse.Plain, expertFf, n),
            DownBias = model.OptionalWeight(p + "ffn_down_exps.bias", WeightUse.Plain, embd, n),
            GateUp = merged ? model.Weight(p + "ffn_gate_up_exps.weight", WeightUse.MatMul, embd, 2 * expertFf, n) : IntPtr.Zero,
            GateUpBias = merged ? model.OptionalWeight(p + "ffn_gate_up_exps.bias", WeightUse.Plain, 2 * expertFf, n) : IntPtr.Zero,
        };
        return new MoeFeedForward(settings, w, shared);
    }

    public IntPtr Build(SpanGraph graph, IntPtr x)
    {
        var ctx = graph.Context;
        var w = weights;
        long n = settings.ExpertCount, k = settings.ExpertUsedCount;
        var embd = EmbeddingWidth(w);
        var rows = Ggml.ggml_nelements(x) / embd;

        var logits = Ggml.ggml_mul_mat(ctx, w.Router, x); // [n_expert, rows]
        if (w.RouterBias != IntPtr.Zero) logits = Ggml.ggml_add(ctx, logits, w.RouterBias);
        var probs = settings.Gating switch
        {
            ExpertGating.Softmax => Ggml.ggml_soft_max(ctx, logits),
            ExpertGating.Sigmoid => Ggml.ggml_sigmoid(ctx, logits),
            _ => logits, // softmax over the chosen ones, below
        };
        // The selection bias steers which experts are chosen; the weights still come from the unbiased probabilities.
        var selection = w.SelectionBias != IntPtr.Zero ? Ggml.ggml_add(ctx, probs, w.SelectionBias) : probs;
        if (settings.GroupCount > 1) selection = LimitToGroups(ctx, selection, n, rows);

        var selected = Ggml.ggml_argsort_top_k(ctx, selection, (int)k); // I32 [k, rows]
        var chosen = Ggml.ggml_get_rows(ctx, Ggml.ggml_reshape_3d(ctx, probs, 1, n, rows), selected); // [1, k, rows]
        if (settings.Gating == ExpertGating.SoftmaxAfterTopK)
            chosen = Ggml.ggml_reshape_3d(ctx, Ggml.ggml_soft_max(ctx, Ggml.ggml_reshape_2d(ctx, chosen, k, rows)), 1, k, rows);
        if (settings.NormalizeWeights)
        {
            var flat = Ggml.ggml_reshape_2d(ctx, chosen, k, rows);
            // llama.cpp clamps the sum to F16's smallest normal so an all-zero row cannot divide by zero.
            var sum = Ggml.ggml_clamp(ctx, Ggml.ggml_sum_rows(ctx, flat), 6.103515625e-5f, float.PositiveInfinity);
            chosen = Ggml.ggml_reshape_3d(ctx, Ggml.ggml_div(ctx, flat, sum), 1, k, rows);
        }
        if (settings.WeightsScale != 0f && settings.WeightsScale != 1f) chosen = Ggml.ggml_scale(ctx, chosen, settings.WeightsScale);
        Ggml.ggml_build_forward_expand(graph.Graph, chosen);

        var cur = Ggml.ggml_reshape_3d(ctx, x, embd, 1, rows);
        IntPtr up, gate;
        if (w.GateUp != IntPtr.Zero)
        {
            var gateUp = Ggml.ggml_mul_mat_id(ctx, w.GateUp, cur, selected); // [2·ff, k, rows]
            if (w.GateUpBias != IntPtr.Zero) gateUp = Ggml.ggml_add_id(ctx, gateUp, w.GateUpBias, selected);
            var ff = Ggml.ggml_nelements(gateUp) / (2 * k * rows);
            nuint nb1 = (nuint)(2 * ff) * sizeof(float), nb2 = nb1 * (nuint)k;
            gate = Ggml.ggml_view_3d(ctx, gateUp, ff, k, rows, nb1, nb2, 0);
            up = Ggml.ggml_view_3d(ctx, gateUp, ff, k, rows, nb1, nb2, (nuint)ff * sizeof(float));
        }
        else
        {
            up = Ggml.ggml_mul_mat_id(ctx, w.Up, cur, selected); // [ff, k, rows]
            if (w.UpBias != IntPtr.Zero) up = Ggml.ggml_add_id(ctx, up, w.UpBias, selected);
            gate = IntPtr.Zero;
            if (w.Gate != IntPtr.Zero)
            {
                gate = Ggml.ggml_mul_mat_id(ctx, w.Gate, cur, selected);
                if (w.GateBias != IntPtr.Zero) gate = Ggml.ggml_add_id(ctx, gate, w.GateBias, selected);
            }
        }

        var hidden = settings.Activation switch
        {
            ExpertActivation.SwigluOai => Ggml.ggml_swiglu_oai(ctx, gate, up, settings.SwigluAlpha, settings.SwigluLimit),
            ExpertActivation.Gelu => gate != IntPtr.Zero ? Ggml.ggml_geglu_split(ctx, gate, up) : Ggml.ggml_gelu(ctx, up),
            _ => gate != IntPtr.Zero ? Ggml.ggml_swiglu_split(ctx, gate, up) : Ggml.ggml_silu(ctx, up),
        };
        var experts = Ggml.ggml_mul_mat_id(ctx, w.Down, hidden, selected); // [embd, k, rows]
        if (w.DownBias != IntPtr.Zero) experts = Ggml.ggml_add_id(ctx, experts, w.DownBias, selected);
        experts = Ggml.ggml_mul(ctx, experts, chosen);
        Ggml.ggml_build_forward_expand(graph.Graph, experts);

        // Sum the used experts' rows in expert-slot order, views first, as llama.cpp orders its nodes.
        var row = (nuint)embd * sizeof(float);
        var stride = row * (nuint)k;
        Span<IntPtr> views = stackalloc IntPtr[(int)k];
        for (var i = 0; i < k; i++)
        {
            views[i] = Ggml.ggml_view_2d(ctx, experts, embd, rows, stride, (nuint)i * row);
            Ggml.ggml_build_forward_expand(graph.Graph, views[i]);
        }
        var output = views[0];
        for (var i = 1; i < k; i++)
        {
            output = Ggml.ggml_add(ctx, output, views[i]);
            Ggml.ggml_build_forward_expand(graph.Graph, output);
        }
        if (k == 1) output = Ggml.ggml_cont(ctx, output);

        if (shared is not null)
        {
            var s = shared.FeedForward.Build(graph, x);
            if (shared.Gate != IntPtr.Zero)
            {
                // llama.cpp's qwen2moe writes the sigmoid as silu(g) / g; the same ops give the same bits.
                var g = Ggml.ggml_mul_mat(ctx, shared.Gate, x);
                s = Ggml.ggml_mul(ctx, s, Ggml.ggml_div(ctx, Ggml.ggml_silu(ctx, g), g));
            }
            output = Ggml.ggml_add(ctx, output, s);
        }
        return output;
    }

    /// <summary>
    /// DeepSeek V3's group-limited routing: score each group by the sum of its two best experts, keep the best
    /// <see cref="MoeSettings.GroupsUsed"/> groups and mask every other expert to −∞ before the top-k.
    /// </summary>
    private IntPtr LimitToGroups(IntPtr ctx, IntPtr selection, long n, long rows)
    {
        long groups = settings.GroupCount, perGroup = n / groups;
        var grouped = Ggml.ggml_reshape_3d(ctx, selection, perGroup, groups, rows); // [perGroup, groups, rows]
        var top2 = Ggml.ggml_argsort_top_k(ctx, grouped, 2); // [2, groups, rows]
        var scores = Ggml.ggml_get_rows(ctx, Ggml.ggml_reshape_4d(ctx, grouped, 1, perGroup, groups, rows), top2); // [1, 2, groups, rows]
        scores = Ggml.ggml_sum_rows(ctx, Ggml.ggml_reshape_3d(ctx, scores, 2, groups, rows)); // [1, groups, rows]
        scores = Ggml.ggml_reshape_2d(ctx, scores, groups, rows);
        var keep = Ggml.ggml_argsort_top_k(ctx, scores, settings.GroupsUsed); // [used, rows]
        var kept = Ggml.ggml_get_rows(ctx, grouped, keep); // [perGroup, used, rows]
        var masked = Ggml.ggml_set_rows(ctx, Ggml.ggml_fill(ctx, grouped, float.NegativeInfinity), kept, keep);
        return Ggml.ggml_reshape_2d(ctx, masked, n, rows);
    }

    private long EmbeddingWidth(MoeWeights w) => Ggml.ggml_nelements(w.Router) / settings.ExpertCount;
}

/// <summary>
/// Implemented by a family's parameters when its layers hold experts: <see cref="GgufModel"/> probes 3-D expert
/// weights for repacking with n_expert_used rows per token, as llama.cpp's loader does.
/// </summary>
public interface IExpertCounts
{
    int ExpertCount { get; }
    int ExpertUsedCount { get; }
}

/// <summary>
/// Expert hyper-parameters of a mixture-of-experts family: <c>expert_count</c>, <c>expert_used_count</c>,
/// <c>expert_feed_forward_length</c> and <c>expert_shared_feed_forward_length</c> (with llama.cpp's fallbacks).
/// </summary>
public sealed record ExpertParameters(int ExpertCount, int ExpertUsedCount, int ExpertFeedForwardLength, int SharedExpertFeedForwardLength)
    : FamilyParameters, IExpertCounts
{
    /// <summary>
    /// Reads the expert keys; a missing expert width falls back to <paramref name="expertWidthFallback"/> (llama.cpp:
    /// n_ff / n_expert_used for the Qwen MoE families, n_ff for Mixtral) and a missing shared width to n_ff.
    /// Never throws for missing keys (inspection reads every supported file).
    /// </summary>
    internal static ExpertParameters Read(GgufMetadata metadata, ModelInfo common, int? expertWidthFallback = null)
    {
        var count = metadata.Int("expert_count", 0);
        var used = metadata.Int("expert_used_count", 0);
        var width = metadata.Int("expert_feed_forward_length", 0);
        if (width == 0) width = expertWidthFallback ?? (used > 0 ? common.FeedForwardLength / used : 0);
        var shared = metadata.Int("expert_shared_feed_forward_length", 0);
        return new ExpertParameters(count, used, width, shared == 0 ? common.FeedForwardLength : shared);
    }

    internal void Validate(ModelInfo info)
    {
        if (ExpertCount <= 0 || ExpertUsedCount <= 0 || ExpertUsedCount > ExpertCount)
            throw new GgufFormatException(info.Path,
                $"{info.Architecture}: expert_used_count {ExpertUsedCount} must lie in [1, expert_count {ExpertCount}]");
        if (ExpertFeedForwardLength <= 0)
            throw new GgufFormatException(info.Path, $"{info.Architecture}: expert feed-forward length must be positive");
    }
}
