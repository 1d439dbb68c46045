using Potluck.Inference.Engine;
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
    /// the mapping (3-D weights are never repacked: <see cref="GgufModel"/> only repacks 2-D ones).
    /// </summary>
    public static MoeFeedForward Bind(GgufModel model, int layer, long embd, long expertFf, MoeSettings settings, SharedExpert? shared = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(settings.ExpertUsedCount, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(settings.ExpertUsedCount, settings.ExpertCount);
        var p = $"blk.{layer}.";
        long n = settings.ExpertCount;
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
        if (settings.GroupCount > 1 && (n % settings.GroupCount != 0 || settings.GroupsUsed < 1 || settings.GroupsUsed > settings.GroupCount))
            throw new ModelTensorException($"layer {layer}: {n} experts cannot form {settings.GroupCount} groups with {settings.GroupsUsed} used");
        return new MoeFeedForward(settings, w, shared);
    }

    public IntPtr Build(SpanGraph graph, IntPtr x) => throw new NotImplementedException("MoeFeedForward.Build is being written on h14-moe");
}
