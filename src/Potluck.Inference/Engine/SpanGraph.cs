using System.Buffers;
using Potluck.Inference.Families;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Engine;

/// <summary>The operands of one attention call: Q, K, V of the step's rows plus the head layout.</summary>
/// <param name="Q">[KeyHeadDim, Heads, rows] F32, RoPE applied.</param>
/// <param name="K">[KeyHeadDim, KvHeads, rows] F32, RoPE applied.</param>
/// <param name="V">[ValueHeadDim × KvHeads, rows] F32 (any view of that shape), or zero when the layer's V is its K's prefix.</param>
/// <param name="Sinks">Per-head attention sink logits [Heads] F32, or zero.</param>
/// <param name="Softcap">Attention logit softcap (Gemma 2), or 0.</param>
internal readonly record struct AttentionInputs(
    IntPtr Q, IntPtr K, IntPtr V, int Heads, int KvHeads, int KeyHeadDim, int ValueHeadDim, float Scale,
    IntPtr Sinks = default, float Softcap = 0f);

/// <summary>RoPE as ggml_rope_ext takes it; a family builds one per distinct layer kind.</summary>
internal readonly record struct RopeSettings(
    int Dimensions, RopeKind Kind, int OriginalContext, float FreqBase, float FreqScale,
    float ExtFactor = 0f, float AttnFactor = 1f, float BetaFast = 32f, float BetaSlow = 1f, IntPtr FreqFactors = default);

/// <summary>
/// The shared part of one span step's graph: inputs (rows, positions), each session's KV cache, causal and
/// sliding-window masks, attention, RoPE and final-layer pruning. Blocks call into it; one instance per span,
/// reset per step, so a steady decode loop allocates nothing.
/// </summary>
internal sealed class SpanGraph
{
    private const float NegativeInfinity = float.NegativeInfinity;
    private const nuint F16 = sizeof(ushort);
    private const nuint F32 = sizeof(float);

    private readonly LayerKv[] _kv;
    private readonly int _firstLayer;
    private readonly int _modelLayers;
    private SpanSegment[] _segments = new SpanSegment[4];
    private KvSession[] _sessions = new KvSession[4];
    // Masks per (window slot, segment): slot 0 is full causal attention, further slots one per distinct window.
    private readonly int?[] _windows;
    private IntPtr[] _masks = new IntPtr[8];
    private IntPtr[] _masksF16 = new IntPtr[8];

    public IntPtr Context { get; private set; }
    public IntPtr Graph { get; private set; }
    /// <summary>I32 [rows]: each row's absolute position.</summary>
    public IntPtr Positions { get; private set; }
    public int Rows { get; private set; }
    public int OutputRows { get; private set; }
    public int SegmentCount { get; private set; }
    private IntPtr _outputIds;

    public SpanGraph(LayerKv[] kv, int firstLayer, int modelLayers)
    {
        _kv = kv;
        _firstLayer = firstLayer;
        _modelLayers = modelLayers;
        _windows = [null, .. kv.Select(k => k.Window).Where(w => w is not null).Distinct()];
    }

    /// <summary>Starts a step: declares the inputs. <paramref name="sessions"/> align with <paramref name="segments"/>.</summary>
    public IntPtr Begin(IntPtr ctx, IntPtr graph, ReadOnlySpan<SpanSegment> segments, KvSession[] sessions, int rows, int outputRows, int width, bool isFinal)
    {
        Context = ctx;
        Graph = graph;
        Rows = rows;
        OutputRows = outputRows;
        SegmentCount = segments.Length;
        if (_segments.Length < segments.Length)
        {
            _segments = new SpanSegment[segments.Length * 2];
            _sessions = new KvSession[segments.Length * 2];
        }
        var slots = _windows.Length * segments.Length;
        if (_masks.Length < slots)
        {
            _masks = new IntPtr[slots * 2];
            _masksF16 = new IntPtr[slots * 2];
        }
        Array.Clear(_masks, 0, slots);
        for (var s = 0; s < segments.Length; s++)
        {
            _segments[s] = segments[s];
            _sessions[s] = sessions[s];
        }

        var x = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.F32, width, rows);
        Ggml.ggml_set_input(x);
        Positions = Ggml.ggml_new_tensor_1d(ctx, (int)GgmlType.I32, rows);
        Ggml.ggml_set_input(Positions);
        _outputIds = IntPtr.Zero;
        if (isFinal && outputRows < rows)
        {
            _outputIds = Ggml.ggml_new_tensor_1d(ctx, (int)GgmlType.I32, outputRows);
            Ggml.ggml_set_input(_outputIds);
        }
        return x;
    }

    /// <summary>Ends the step's references to sessions (the arrays are reused).</summary>
    public void End()
    {
        Array.Clear(_sessions, 0, SegmentCount);
        Context = IntPtr.Zero;
        Graph = IntPtr.Zero;
    }

    /// <summary>True when <paramref name="spanLayer"/> is the model's last layer and the step keeps fewer rows than it feeds.</summary>
    public bool PrunesAt(int spanLayer) => _outputIds != IntPtr.Zero && _firstLayer + spanLayer == _modelLayers - 1;

    /// <summary>
    /// On the model's last layer, keeps only the rows whose outputs are wanted (llama.cpp does the same after
    /// attention); earlier layers must keep every row, whose K/V the cache needs. Elsewhere returns <paramref name="t"/>.
    /// </summary>
    public IntPtr PruneRows(int spanLayer, IntPtr t) => PrunesAt(spanLayer) ? Ggml.ggml_get_rows(Context, t, _outputIds) : t;

    public IntPtr Rope(IntPtr t, in RopeSettings r) =>
        Ggml.ggml_rope_ext(Context, t, Positions, r.FreqFactors, r.Dimensions, (int)r.Kind, r.OriginalContext,
            r.FreqBase, r.FreqScale, r.ExtFactor, r.AttnFactor, r.BetaFast, r.BetaSlow);

    /// <summary>Positions the session of segment <paramref name="segment"/> was opened for (llama.cpp's n_ctx_per_seq).</summary>
    public int SessionCapacity(int segment) => _sessions[segment].Capacity;

    /// <summary>
    /// RoPE whose settings depend on each session's capacity (LongRoPE picks its factors by the context, as
    /// llama.cpp does by n_ctx_per_seq): one rope when every segment agrees, else one per segment's rows,
    /// concatenated. <paramref name="t"/> is [<paramref name="headDim"/>, <paramref name="heads"/>, rows] and contiguous.
    /// </summary>
    public IntPtr Rope(IntPtr t, int headDim, int heads, Func<int, RopeSettings> byCapacity)
    {
        var first = byCapacity(_sessions[0].Capacity);
        var uniform = true;
        for (var s = 1; s < SegmentCount && uniform; s++) uniform = byCapacity(_sessions[s].Capacity) == first;
        if (uniform) return Rope(t, first);

        long ne0 = headDim, ne1 = heads;
        var rowBytes = (nuint)(ne0 * ne1) * F32;
        IntPtr result = IntPtr.Zero;
        var rowOffset = 0;
        for (var s = 0; s < SegmentCount; s++)
        {
            var count = _segments[s].RowCount;
            var part = Ggml.ggml_view_3d(Context, t, ne0, ne1, count, (nuint)ne0 * F32, rowBytes, (nuint)rowOffset * rowBytes);
            var positions = Ggml.ggml_view_1d(Context, Positions, count, (nuint)rowOffset * sizeof(int));
            var r = byCapacity(_sessions[s].Capacity);
            var roped = Ggml.ggml_rope_ext(Context, part, positions, r.FreqFactors, r.Dimensions, (int)r.Kind, r.OriginalContext,
                r.FreqBase, r.FreqScale, r.ExtFactor, r.AttnFactor, r.BetaFast, r.BetaSlow);
            result = result == IntPtr.Zero ? roped : Ggml.ggml_concat(Context, result, roped, 2);
            rowOffset += count;
        }
        return result;
    }

    /// <summary>
    /// Writes the rows' K and V into each session's cache for layer <paramref name="spanLayer"/> and attends every
    /// session's rows to its own cache (flash attention, F32 precision, the layer's window). Returns
    /// [ValueHeadDim × Heads, rows].
    /// </summary>
    public IntPtr Attention(int spanLayer, in AttentionInputs a)
    {
        var ctx = Context;
        var kv = _kv[spanLayer];
        var slot = Array.IndexOf(_windows, kv.Window);
        var kWidth = kv.KeyWidth;
        var vWidth = kv.ValueWidth;
        var kRow = (nuint)kWidth * F16;
        var vRow = (nuint)vWidth * F16;
        var qWidth = a.KeyHeadDim * a.Heads;
        var k2 = Ggml.ggml_reshape_2d(ctx, a.K, kWidth, Rows);
        var attention = IntPtr.Zero;
        var rowOffset = 0;
        for (var s = 0; s < SegmentCount; s++)
        {
            var seg = _segments[s];
            var session = _sessions[s];
            var kCache = session.Keys[spanLayer];
            var segK = Ggml.ggml_view_2d(ctx, k2, kWidth, seg.RowCount, (nuint)kWidth * F32, (nuint)(rowOffset * kWidth) * F32);
            var kSlot = Ggml.ggml_view_2d(ctx, kCache, kWidth, seg.RowCount, kRow, (nuint)seg.StartPosition * kRow);
            // The cache writes must precede the attention reading the cache: nodes run in insertion order.
            Ggml.ggml_build_forward_expand(Graph, Ggml.ggml_cpy(ctx, segK, kSlot));

            var kvLength = seg.StartPosition + seg.RowCount;
            var keys = Ggml.ggml_view_3d(ctx, kCache, a.KeyHeadDim, kvLength, a.KvHeads, kRow, (nuint)a.KeyHeadDim * F16, 0);
            IntPtr values;
            if (kv.ValueSharesKey)
            {
                values = Ggml.ggml_view_3d(ctx, kCache, a.ValueHeadDim, kvLength, a.KvHeads, kRow, (nuint)a.KeyHeadDim * F16, 0);
            }
            else
            {
                var vCache = session.Values[spanLayer];
                var segV = Ggml.ggml_view_2d(ctx, a.V, vWidth, seg.RowCount, (nuint)vWidth * F32, (nuint)(rowOffset * vWidth) * F32);
                var vSlot = Ggml.ggml_view_2d(ctx, vCache, vWidth, seg.RowCount, vRow, (nuint)seg.StartPosition * vRow);
                Ggml.ggml_build_forward_expand(Graph, Ggml.ggml_cpy(ctx, segV, vSlot));
                values = Ggml.ggml_view_3d(ctx, vCache, a.ValueHeadDim, kvLength, a.KvHeads, vRow, (nuint)a.ValueHeadDim * F16, 0);
            }
            var segQ = Ggml.ggml_view_3d(ctx, a.Q, a.KeyHeadDim, a.Heads, seg.RowCount,
                (nuint)a.KeyHeadDim * F32, (nuint)qWidth * F32, (nuint)(rowOffset * qWidth) * F32);
            segQ = Ggml.ggml_permute(ctx, segQ, 0, 2, 1, 3);
            var attn = Ggml.ggml_flash_attn_ext(ctx, segQ, keys, values, Mask(slot, s), a.Scale, 0f, a.Softcap);
            if (a.Sinks != IntPtr.Zero) Ggml.ggml_flash_attn_ext_add_sinks(attn, a.Sinks);
            Ggml.ggml_flash_attn_ext_set_prec(attn, Ggml.PrecisionF32);
            attn = Ggml.ggml_reshape_2d(ctx, attn, (long)a.ValueHeadDim * a.Heads, seg.RowCount);
            attention = attention == IntPtr.Zero ? attn : Ggml.ggml_concat(ctx, attention, attn, 1);
            rowOffset += seg.RowCount;
        }
        return attention;
    }

    private IntPtr Mask(int slot, int segment)
    {
        var i = slot * SegmentCount + segment;
        if (_masks[i] == IntPtr.Zero)
        {
            var seg = _segments[segment];
            _masks[i] = Ggml.ggml_new_tensor_2d(Context, (int)GgmlType.F32, seg.StartPosition + seg.RowCount, PadRows(seg.RowCount));
            Ggml.ggml_set_input(_masks[i]);
            _masksF16[i] = Ggml.ggml_cast(Context, _masks[i], (int)GgmlType.F16);
        }
        return _masksF16[i];
    }

    private static int PadRows(int rows) => (rows + Ggml.KqMaskPad - 1) / Ggml.KqMaskPad * Ggml.KqMaskPad;

    /// <summary>After allocation: writes positions, the kept-row ids and every mask the blocks asked for.</summary>
    public void WriteInputs()
    {
        var ints = ArrayPool<int>.Shared.Rent(Rows);
        try
        {
            var n = 0;
            for (var s = 0; s < SegmentCount; s++)
                for (var i = 0; i < _segments[s].RowCount; i++) ints[n++] = _segments[s].StartPosition + i;
            GraphRunner.Write(Positions, ints.AsSpan(0, Rows));

            if (_outputIds != IntPtr.Zero)
            {
                int row = 0, o = 0;
                for (var s = 0; s < SegmentCount; s++)
                {
                    var seg = _segments[s];
                    if (seg.LastRowOnly) ints[o++] = row + seg.RowCount - 1;
                    else for (var i = 0; i < seg.RowCount; i++) ints[o++] = row + i;
                    row += seg.RowCount;
                }
                GraphRunner.Write(_outputIds, ints.AsSpan(0, OutputRows));
            }
        }
        finally
        {
            ArrayPool<int>.Shared.Return(ints);
        }

        for (var slot = 0; slot < _windows.Length; slot++)
            for (var s = 0; s < SegmentCount; s++)
                if (_masks[slot * SegmentCount + s] is var mask && mask != IntPtr.Zero)
                    WriteMask(mask, _segments[s], _windows[slot]);
    }

    /// <summary>
    /// Causal mask: position p sees [0, p]; with a window W, only positions q with p − q &lt; W
    /// (llama.cpp's standard sliding window). Padding rows are fully masked.
    /// </summary>
    private static void WriteMask(IntPtr tensor, SpanSegment seg, int? window)
    {
        var kv = seg.StartPosition + seg.RowCount;
        var size = kv * PadRows(seg.RowCount);
        var mask = ArrayPool<float>.Shared.Rent(size);
        try
        {
            var span = mask.AsSpan(0, size);
            span.Fill(NegativeInfinity);
            for (var i = 0; i < seg.RowCount; i++)
            {
                var p = seg.StartPosition + i;
                var first = window is { } w ? Math.Max(0, p - w + 1) : 0;
                span.Slice(i * kv + first, p + 1 - first).Clear();
            }
            GraphRunner.Write(tensor, (ReadOnlySpan<float>)span);
        }
        finally
        {
            ArrayPool<float>.Shared.Return(mask);
        }
    }
}
