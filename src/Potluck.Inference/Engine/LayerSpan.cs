using System.Buffers;
using System.Numerics;
using System.Runtime.InteropServices;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Engine;

/// <summary>
/// Runs transformer layers [Start, End) of a Llama-family model on ggml: hidden states in, hidden states out,
/// with a KV cache per session. Several sessions' rows can share one step: matmuls run over all rows at once,
/// attention per session against its own cache. Steps are serialized; all methods are thread-safe.
/// </summary>
public sealed class LayerSpan : IDisposable
{
    private const float NegativeInfinity = float.NegativeInfinity;

    private readonly GgufModel _model;
    private readonly ModelInfo _info;
    private readonly LayerWeights[] _layers;
    private readonly IntPtr _ropeFactors;
    private readonly GraphRunner _runner;
    private readonly Dictionary<string, KvSession> _sessions = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();
    private readonly int _kvWidth;
    private readonly float _attentionScale;
    private long _reservedTokens;
    private bool _disposed;

    public int Start { get; }
    public int End { get; }
    /// <summary>True when the span ends at the model's last layer (it may return only the rows asked for).</summary>
    public bool IsFinal { get; }
    /// <summary>Hidden-state width (n_embd).</summary>
    public int Width { get; }
    public ModelInfo Model => _info;
    public long KvBudgetTokens { get; }
    public long KvReservedTokens { get { lock (_gate) return _reservedTokens; } }
    public long FreeKvTokens => KvBudgetTokens - KvReservedTokens;
    /// <summary>F16 K plus V bytes one position costs across the span's layers.</summary>
    public long KvBytesPerToken { get; }

    public IReadOnlyCollection<string> Sessions
    {
        get { lock (_gate) return _sessions.Keys.ToArray(); }
    }

    public LayerSpan(GgufModel model, int start, int end, SpanOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new SpanOptions();
        _model = model;
        _info = model.Info;
        if (start < 0 || end > _info.LayerCount || start >= end)
            throw new LayerRangeException(
                $"layer span [{start}, {end}) is not a non-empty range within [0, {_info.LayerCount}) of '{_info.Path}'");
        Start = start;
        End = end;
        IsFinal = end == _info.LayerCount;
        Width = _info.EmbeddingLength;
        _kvWidth = _info.HeadDim * _info.KvHeadCount;
        _attentionScale = 1f / MathF.Sqrt(_info.HeadDim);
        KvBytesPerToken = 2L * (end - start) * _kvWidth * sizeof(ushort);
        KvBudgetTokens = options.KvBudgetTokens ?? 4L * _info.ContextLength;
        if (KvBudgetTokens <= 0) throw new ArgumentOutOfRangeException(nameof(options), "KV budget must be positive");

        _layers = new LayerWeights[end - start];
        for (var l = start; l < end; l++) _layers[l - start] = LayerWeights.Bind(model, l);
        _ropeFactors = _info.HasRopeFreqFactors
            ? model.Weight("rope_freqs.weight", WeightUse.Plain, _info.HeadDim / 2)
            : IntPtr.Zero;
        _runner = new GraphRunner(options.Threads);
    }

    /// <summary>Reserves KV room for a session of up to <paramref name="maxTokens"/> positions. Re-opening is a no-op.</summary>
    public void OpenSession(string sessionId, int maxTokens)
    {
        ArgumentException.ThrowIfNullOrEmpty(sessionId);
        if (maxTokens <= 0 || maxTokens > _info.ContextLength)
            throw new ContextOverflowException(
                $"session '{sessionId}' asks for {maxTokens} positions; the model's context is {_info.ContextLength}");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_sessions.ContainsKey(sessionId)) return;
            if (_reservedTokens + maxTokens > KvBudgetTokens)
                throw new KvBudgetExceededException(
                    $"session '{sessionId}' needs {maxTokens} KV positions but layers [{Start}, {End}) have {KvBudgetTokens - _reservedTokens} of {KvBudgetTokens} free");
            _sessions[sessionId] = new KvSession(sessionId, maxTokens, End - Start, _kvWidth, _runner.Backend);
            _reservedTokens += maxTokens;
        }
    }

    /// <summary>Frees a session's KV cache; false when the span did not hold it.</summary>
    public bool CloseSession(string sessionId)
    {
        lock (_gate)
        {
            if (!_sessions.Remove(sessionId, out var session)) return false;
            _reservedTokens -= session.Capacity;
            session.Dispose();
            return true;
        }
    }

    /// <summary>Positions the session's cache holds.</summary>
    public int SessionLength(string sessionId)
    {
        lock (_gate) return Get(sessionId).Length;
    }

    /// <summary>Keeps positions [0, length) and forgets the rest (replay, stop sequences).</summary>
    public void Truncate(string sessionId, int length)
    {
        lock (_gate)
        {
            var session = Get(sessionId);
            if (length < 0 || length > session.Length)
                throw new PositionMismatchException(
                    $"cannot truncate session '{sessionId}' to {length}: it holds {session.Length} positions");
            session.Length = length;
        }
    }

    private KvSession Get(string sessionId) =>
        _sessions.TryGetValue(sessionId, out var s) ? s : throw new UnknownSessionException(sessionId);

    /// <summary>
    /// Runs one step. <paramref name="hidden"/> holds every segment's rows in order ([rows, Width] F32);
    /// <paramref name="output"/> receives each segment's <see cref="SpanSegment.OutputRows"/> rows in the same order.
    /// </summary>
    public void Forward(ReadOnlySpan<SpanSegment> segments, ReadOnlySpan<float> hidden, Span<float> output)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var sessions = ArrayPool<KvSession>.Shared.Rent(Math.Max(1, segments.Length));
            try
            {
                var (rows, outputRows) = Validate(segments, hidden, output, sessions);
                Run(segments, sessions, hidden, output, rows, outputRows);
                for (var i = 0; i < segments.Length; i++) sessions[i].Length += segments[i].RowCount;
            }
            finally
            {
                Array.Clear(sessions, 0, segments.Length);
                ArrayPool<KvSession>.Shared.Return(sessions);
            }
        }
    }

    private (int Rows, int OutputRows) Validate(
        ReadOnlySpan<SpanSegment> segments, ReadOnlySpan<float> hidden, Span<float> output, KvSession[] sessions)
    {
        if (segments.IsEmpty) throw new HiddenStateShapeException("a step needs at least one segment");
        int rows = 0, outputRows = 0;
        for (var i = 0; i < segments.Length; i++)
        {
            var seg = segments[i];
            var session = Get(seg.SessionId);
            for (var j = 0; j < i; j++)
                if (ReferenceEquals(sessions[j], session))
                    throw new HiddenStateShapeException($"session '{seg.SessionId}' appears twice in one step");
            if (seg.RowCount <= 0) throw new HiddenStateShapeException($"segment of session '{seg.SessionId}' has {seg.RowCount} rows");
            if (seg.StartPosition != session.Length)
                throw new PositionMismatchException(
                    $"session '{seg.SessionId}' holds {session.Length} positions but the step starts at {seg.StartPosition}");
            if ((long)seg.StartPosition + seg.RowCount > session.Capacity)
                throw new ContextOverflowException(
                    $"session '{seg.SessionId}' step ends at position {seg.StartPosition + seg.RowCount}, past its {session.Capacity}-position context");
            if (seg.LastRowOnly && !IsFinal)
                throw new HiddenStateShapeException(
                    $"layers [{Start}, {End}) are not the final span; the next span needs every row");
            sessions[i] = session;
            rows += seg.RowCount;
            outputRows += seg.OutputRows;
        }
        if (hidden.Length != (long)rows * Width)
            throw new HiddenStateShapeException(
                $"step carries {hidden.Length} floats; {rows} rows of width {Width} need {(long)rows * Width}");
        if (output.Length != (long)outputRows * Width)
            throw new HiddenStateShapeException(
                $"output holds {output.Length} floats; {outputRows} rows of width {Width} need {(long)outputRows * Width}");
        var bad = FirstNonFinite(hidden);
        if (bad >= 0)
            throw new NonFiniteHiddenStateException(
                $"hidden state row {bad / Width}, column {bad % Width} is {hidden[bad]}; NaN and infinity are refused");
        return (rows, outputRows);
    }

    /// <summary>Index of the first NaN or infinity, or -1.</summary>
    internal static int FirstNonFinite(ReadOnlySpan<float> values)
    {
        var i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var vectors = MemoryMarshal.Cast<float, Vector<float>>(values);
            for (; i < vectors.Length; i++)
            {
                var v = vectors[i];
                // x - x is 0 for finite x and NaN for NaN or infinity.
                if (!Vector.EqualsAll(v - v, Vector<float>.Zero)) break;
            }
            i *= Vector<float>.Count;
        }
        for (; i < values.Length; i++)
            if (!float.IsFinite(values[i])) return i;
        return -1;
    }

    private void Run(ReadOnlySpan<SpanSegment> segments, KvSession[] sessions, ReadOnlySpan<float> hidden,
        Span<float> output, int rows, int outputRows)
    {
        var info = _info;
        var headDim = info.HeadDim;
        var heads = info.HeadCount;
        var kvHeads = info.KvHeadCount;
        var qWidth = headDim * heads;
        var f16 = (nuint)sizeof(ushort);
        var f32 = (nuint)sizeof(float);
        var segmentCount = segments.Length;
        var nodes = 256 + _layers.Length * (48 + 16 * segmentCount);
        var (ctx, graph) = _runner.Begin(nodes);
        try
        {
            var x = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.F32, Width, rows);
            Ggml.ggml_set_input(x);
            var positions = Ggml.ggml_new_tensor_1d(ctx, (int)GgmlType.I32, rows);
            Ggml.ggml_set_input(positions);
            Span<IntPtr> masks = stackalloc IntPtr[segmentCount];
            Span<IntPtr> masksF16 = stackalloc IntPtr[segmentCount];
            for (var s = 0; s < segmentCount; s++)
            {
                var kv = segments[s].StartPosition + segments[s].RowCount;
                masks[s] = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.F32, kv, PadRows(segments[s].RowCount));
                Ggml.ggml_set_input(masks[s]);
                masksF16[s] = Ggml.ggml_cast(ctx, masks[s], (int)GgmlType.F16);
            }
            var prune = IsFinal && outputRows < rows;
            var outputIds = IntPtr.Zero;
            if (prune)
            {
                outputIds = Ggml.ggml_new_tensor_1d(ctx, (int)GgmlType.I32, outputRows);
                Ggml.ggml_set_input(outputIds);
            }

            var cur = x;
            for (var li = 0; li < _layers.Length; li++)
            {
                ref readonly var w = ref _layers[li];
                var residual = cur;
                var normed = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, cur, info.RmsNormEps), w.AttnNorm);

                var q = Linear(ctx, w.Q, w.QBias, normed);
                var k = Linear(ctx, w.K, w.KBias, normed);
                var v = Linear(ctx, w.V, w.VBias, normed);
                q = Ggml.ggml_reshape_3d(ctx, q, headDim, heads, rows);
                k = Ggml.ggml_reshape_3d(ctx, k, headDim, kvHeads, rows);
                if (w.QNorm != IntPtr.Zero)
                {
                    q = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, q, info.RmsNormEps), w.QNorm);
                    k = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, k, info.RmsNormEps), w.KNorm);
                }
                q = Rope(ctx, q, positions);
                k = Rope(ctx, k, positions);

                var attention = IntPtr.Zero;
                var rowOffset = 0;
                for (var s = 0; s < segmentCount; s++)
                {
                    var seg = segments[s];
                    var session = sessions[s];
                    var kvCache = session.Keys[li];
                    var vCache = session.Values[li];
                    var kvRowBytes = (nuint)_kvWidth * f16;
                    var segK = Ggml.ggml_view_2d(ctx, k, _kvWidth, seg.RowCount, (nuint)_kvWidth * f32, (nuint)(rowOffset * _kvWidth) * f32);
                    var segV = Ggml.ggml_view_2d(ctx, v, _kvWidth, seg.RowCount, (nuint)_kvWidth * f32, (nuint)(rowOffset * _kvWidth) * f32);
                    var kSlot = Ggml.ggml_view_2d(ctx, kvCache, _kvWidth, seg.RowCount, kvRowBytes, (nuint)seg.StartPosition * kvRowBytes);
                    var vSlot = Ggml.ggml_view_2d(ctx, vCache, _kvWidth, seg.RowCount, kvRowBytes, (nuint)seg.StartPosition * kvRowBytes);
                    // The cache writes must precede the attention reading the cache: nodes run in insertion order.
                    Ggml.ggml_build_forward_expand(graph, Ggml.ggml_cpy(ctx, segK, kSlot));
                    Ggml.ggml_build_forward_expand(graph, Ggml.ggml_cpy(ctx, segV, vSlot));

                    var kvLength = seg.StartPosition + seg.RowCount;
                    var keys = Ggml.ggml_view_3d(ctx, kvCache, headDim, kvLength, kvHeads, kvRowBytes, (nuint)headDim * f16, 0);
                    var values = Ggml.ggml_view_3d(ctx, vCache, headDim, kvLength, kvHeads, kvRowBytes, (nuint)headDim * f16, 0);
                    var segQ = Ggml.ggml_view_3d(ctx, q, headDim, heads, seg.RowCount,
                        (nuint)headDim * f32, (nuint)qWidth * f32, (nuint)(rowOffset * qWidth) * f32);
                    segQ = Ggml.ggml_permute(ctx, segQ, 0, 2, 1, 3);
                    var attn = Ggml.ggml_flash_attn_ext(ctx, segQ, keys, values, masksF16[s], _attentionScale, 0f, 0f);
                    Ggml.ggml_flash_attn_ext_set_prec(attn, Ggml.PrecisionF32);
                    attn = Ggml.ggml_reshape_2d(ctx, attn, qWidth, seg.RowCount);
                    attention = attention == IntPtr.Zero ? attn : Ggml.ggml_concat(ctx, attention, attn, 1);
                    rowOffset += seg.RowCount;
                }

                cur = Linear(ctx, w.Output, w.OutputBias, attention);
                if (prune && Start + li == info.LayerCount - 1)
                {
                    // Only the final layer may drop rows: earlier layers feed every row's K/V to the cache.
                    cur = Ggml.ggml_get_rows(ctx, cur, outputIds);
                    residual = Ggml.ggml_get_rows(ctx, residual, outputIds);
                }
                var ffnInput = Ggml.ggml_add(ctx, cur, residual);
                normed = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, ffnInput, info.RmsNormEps), w.FfnNorm);
                var gate = Ggml.ggml_mul_mat(ctx, w.Gate, normed);
                var up = Ggml.ggml_mul_mat(ctx, w.Up, normed);
                cur = Ggml.ggml_mul_mat(ctx, w.Down, Ggml.ggml_swiglu_split(ctx, gate, up));
                cur = Ggml.ggml_add(ctx, cur, ffnInput);
            }
            Ggml.ggml_set_output(cur);
            Ggml.ggml_build_forward_expand(graph, cur);

            _runner.Allocate(graph);
            GraphRunner.Write(x, hidden);
            WritePositionsAndMasks(segments, positions, masks, outputIds, rows, outputRows);
            _runner.Compute(graph);
            GraphRunner.Read(cur, output);
        }
        finally
        {
            _runner.End();
        }
    }

    private static int PadRows(int rows) => (rows + Ggml.KqMaskPad - 1) / Ggml.KqMaskPad * Ggml.KqMaskPad;

    private static IntPtr Linear(IntPtr ctx, IntPtr weight, IntPtr bias, IntPtr input)
    {
        var y = Ggml.ggml_mul_mat(ctx, weight, input);
        return bias == IntPtr.Zero ? y : Ggml.ggml_add(ctx, y, bias);
    }

    private IntPtr Rope(IntPtr ctx, IntPtr t, IntPtr positions)
    {
        var info = _info;
        var yarn = string.Equals(info.RopeScalingType, "yarn", StringComparison.Ordinal);
        return Ggml.ggml_rope_ext(ctx, t, positions, _ropeFactors, info.HeadDim, (int)info.Rope, info.ContextLength,
            info.RopeFreqBase, info.RopeFreqScale, yarn ? 1f : 0f, 1f, 32f, 1f);
    }

    private static void WritePositionsAndMasks(ReadOnlySpan<SpanSegment> segments, IntPtr positions, Span<IntPtr> masks,
        IntPtr outputIds, int rows, int outputRows)
    {
        var ints = ArrayPool<int>.Shared.Rent(Math.Max(rows, outputRows));
        try
        {
            var n = 0;
            foreach (var seg in segments)
                for (var i = 0; i < seg.RowCount; i++) ints[n++] = seg.StartPosition + i;
            GraphRunner.Write(positions, ints.AsSpan(0, rows));

            if (outputIds != IntPtr.Zero)
            {
                int row = 0, o = 0;
                foreach (var seg in segments)
                {
                    if (seg.LastRowOnly) ints[o++] = row + seg.RowCount - 1;
                    else for (var i = 0; i < seg.RowCount; i++) ints[o++] = row + i;
                    row += seg.RowCount;
                }
                GraphRunner.Write(outputIds, ints.AsSpan(0, outputRows));
            }
        }
        finally
        {
            ArrayPool<int>.Shared.Return(ints);
        }

        for (var s = 0; s < segments.Length; s++)
        {
            var seg = segments[s];
            var kv = seg.StartPosition + seg.RowCount;
            var padded = PadRows(seg.RowCount);
            var size = kv * padded;
            var mask = ArrayPool<float>.Shared.Rent(size);
            try
            {
                var span = mask.AsSpan(0, size);
                span.Fill(NegativeInfinity);
                for (var i = 0; i < seg.RowCount; i++)
                    span.Slice(i * kv, seg.StartPosition + i + 1).Clear(); // causal: position p sees [0, p]
                GraphRunner.Write(masks[s], (ReadOnlySpan<float>)span);
            }
            finally
            {
                ArrayPool<float>.Shared.Return(mask);
            }
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            foreach (var s in _sessions.Values) s.Dispose();
            _sessions.Clear();
            _reservedTokens = 0;
            _runner.Dispose();
        }
    }

    /// <summary>One layer's tensors, bound from the shared model and shape-checked against the hyperparameters.</summary>
    private readonly record struct LayerWeights(
        IntPtr AttnNorm, IntPtr Q, IntPtr K, IntPtr V, IntPtr Output,
        IntPtr QBias, IntPtr KBias, IntPtr VBias, IntPtr OutputBias,
        IntPtr QNorm, IntPtr KNorm,
        IntPtr FfnNorm, IntPtr Gate, IntPtr Up, IntPtr Down)
    {
        public static LayerWeights Bind(GgufModel model, int layer)
        {
            var i = model.Info;
            long embd = i.EmbeddingLength, q = (long)i.HeadDim * i.HeadCount, kv = (long)i.HeadDim * i.KvHeadCount, ff = i.FeedForwardLength;
            var p = $"blk.{layer}.";
            var qNorm = model.OptionalWeight(p + "attn_q_norm.weight", WeightUse.Plain, i.HeadDim);
            var kNorm = model.OptionalWeight(p + "attn_k_norm.weight", WeightUse.Plain, i.HeadDim);
            if (i.Architecture == "qwen3" && (qNorm == IntPtr.Zero || kNorm == IntPtr.Zero))
                throw new ModelTensorException($"qwen3 layer {layer} lacks attn_q_norm/attn_k_norm");
            return new LayerWeights(
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
                model.Weight(p + "ffn_gate.weight", WeightUse.MatMul, embd, ff),
                model.Weight(p + "ffn_up.weight", WeightUse.MatMul, embd, ff),
                model.Weight(p + "ffn_down.weight", WeightUse.MatMul, ff, embd));
        }
    }
}
