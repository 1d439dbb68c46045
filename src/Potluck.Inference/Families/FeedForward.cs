using Potluck.Inference.Engine;
using Potluck.Inference.Native;

namespace Potluck.Inference.Families;

/// <summary>A layer's feed-forward part (dense or a mixture of experts), after its norm.</summary>
internal interface IFeedForward
{
    /// <summary>Upper bound on the graph nodes it adds.</summary>
    int GraphNodes { get; }

    /// <summary><paramref name="x"/> [width, rows] normed input; returns [width, rows].</summary>
    IntPtr Build(SpanGraph graph, IntPtr x);
}

/// <summary>Gated dense feed-forward: down · act(gate · x) ⊙ (up · x), with SwiGLU or GeGLU.</summary>
internal sealed class DenseFeedForward(IntPtr gate, IntPtr up, IntPtr down, DenseFeedForward.Activation activation = DenseFeedForward.Activation.Silu)
    : IFeedForward
{
    public enum Activation { Silu, Gelu }

    public int GraphNodes => 8;

    public IntPtr Build(SpanGraph graph, IntPtr x)
    {
        var ctx = graph.Context;
        var g = Ggml.ggml_mul_mat(ctx, gate, x);
        var u = Ggml.ggml_mul_mat(ctx, up, x);
        var h = activation == Activation.Silu ? Ggml.ggml_swiglu_split(ctx, g, u) : Ggml.ggml_geglu_split(ctx, g, u);
        return Ggml.ggml_mul_mat(ctx, down, h);
    }

    /// <summary>Binds blk.N.ffn_gate/up/down with widths [embd → ff → embd].</summary>
    public static DenseFeedForward Bind(GgufModel model, int layer, long embd, long ff, Activation activation = Activation.Silu)
    {
        var p = $"blk.{layer}.";
        return new DenseFeedForward(
            model.Weight(p + "ffn_gate.weight", WeightUse.MatMul, embd, ff),
            model.Weight(p + "ffn_up.weight", WeightUse.MatMul, embd, ff),
            model.Weight(p + "ffn_down.weight", WeightUse.MatMul, ff, embd),
            activation);
    }
}
