using Potluck.Inference.Engine;

namespace Potluck.Inference.Families;

/// <summary>
/// One bound layer of a family: appends its part of a step's graph. Attention, RoPE, masks, the KV cache
/// and final-layer row pruning are the <see cref="SpanGraph"/>'s, so a block only arranges its own tensors.
/// </summary>
internal interface ILayerBlock
{
    /// <summary>What the layer caches per position; the span sizes each session's cache from it.</summary>
    LayerKv Kv { get; }

    /// <summary>Upper bound on graph nodes the layer adds for a step of <paramref name="segments"/> sessions.</summary>
    int GraphNodes(int segments) => 64 + 16 * segments;

    /// <summary>Appends the layer: hidden rows <paramref name="input"/> [width, rows] in, the layer's output out.</summary>
    IntPtr Build(SpanGraph graph, int spanLayer, IntPtr input);
}
