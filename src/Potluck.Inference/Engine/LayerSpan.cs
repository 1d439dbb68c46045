using System.Buffers;
using System.Numerics;
using System.Runtime.InteropServices;
using Potluck.Inference.Families;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Engine;

/// <summary>
/// Runs transformer layers [Start, End) of a model on ggml, each layer built by its family's block: hidden states in, hidden states out,
/// with a KV cache per session. Several sessions' rows can share one step: matmuls run over all rows at once,
/// attention per session against its own cache. Steps are serialized; all methods are thread-safe.
/// KV is paged: a session is charged for whole blocks of <see cref="KvBlockTokens"/> positions as it grows (one
/// block at open, more as steps need them), from a budget of <see cref="KvBudgetTokens"/> shared by every session;
/// a step that finds no room fails with <see cref="KvBudgetExceededException"/> before anything is computed.
/// </summary>
public sealed class LayerSpan : IDisposable
{
    /// <summary>Positions per KV block: the unit sessions are charged in, and grow and shrink by.</summary>
    public const int KvBlockTokens = 64;

    private readonly ModelInfo _info;
    private readonly ILayerBlock[] _blocks;
    private readonly LayerKv[] _kv;
    private readonly SpanGraph _graph;
    private readonly GraphRunner _runner;
    private readonly Dictionary<string, KvSession> _sessions = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();
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
        _info = model.Info;
        if (start < 0 || end > _info.LayerCount || start >= end)
            throw new LayerRangeException(
                $"layer span [{start}, {end}) is not a non-empty range within [0, {_info.LayerCount}) of '{_info.Path}'");
        Start = start;
        End = end;
        IsFinal = end == _info.LayerCount;
        Width = _info.EmbeddingLength;
        _kv = new LayerKv[end - start];
        for (var l = start; l < end; l++) _kv[l - start] = _info.KvLayers[l];
        KvBytesPerToken = _kv.Sum(k => k.BytesPerToken);
        KvBudgetTokens = options.KvBudgetTokens ?? 4L * _info.ContextLength;
        if (KvBudgetTokens <= 0) throw new ArgumentOutOfRangeException(nameof(options), "KV budget must be positive");

        var family = ModelFamilies.Find(_info.Architecture) ?? throw new UnsupportedArchitectureException(_info.Architecture, ModelFamilies.Supported);
        _blocks = new ILayerBlock[end - start];
        for (var l = start; l < end; l++)
        {
            _blocks[l - start] = family.BindLayer(model, l);
            if (_blocks[l - start].Kv != _kv[l - start])
                throw new InvalidOperationException($"{_info.Architecture} layer {l} builds a KV layout other than the one it describes");
        }
        _graph = new SpanGraph(_kv, start, _info.LayerCount);
        _runner = new GraphRunner(options.Threads);
    }

    /// <summary>
    /// Opens a session that may grow to <paramref name="maxTokens"/> positions, charging its first block; later blocks are
    /// charged as steps need them (<see cref="Reserve"/>). Re-opening is a no-op.
    /// </summary>
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
            var first = Math.Min(maxTokens, KvBlockTokens);
            if (_reservedTokens + first > KvBudgetTokens)
                throw new KvBudgetExceededException(
                    $"session '{sessionId}' cannot open: layers [{Start}, {End}) have {KvBudgetTokens - _reservedTokens} of {KvBudgetTokens} KV positions free");
            _sessions[sessionId] = new KvSession(sessionId, maxTokens, _kv) { ReservedTokens = first };
            _reservedTokens += first;
        }
    }

    /// <summary>
    /// Charges the blocks the session needs to hold <paramref name="length"/> positions (a step about to run).
    /// Throws <see cref="KvBudgetExceededException"/> when the budget has no room, changing nothing.
    /// </summary>
    public void Reserve(string sessionId, int length)
    {
        lock (_gate)
        {
            var session = Get(sessionId);
            if (length > session.Capacity)
                throw new ContextOverflowException(
                    $"session '{sessionId}' step ends at position {length}, past its {session.Capacity}-position context");
            var more = BlocksFor(length, session.Capacity) - session.ReservedTokens;
            if (more <= 0) return;
            if (_reservedTokens + more > KvBudgetTokens) throw Full(sessionId, more);
            session.ReservedTokens += more;
            _reservedTokens += more;
        }
    }

    private static int BlocksFor(int length, int capacity) =>
        (int)Math.Min(capacity, ((long)Math.Max(length, 1) + KvBlockTokens - 1) / KvBlockTokens * KvBlockTokens);

    private KvBudgetExceededException Full(string sessionId, long more) => new(
        $"layers [{Start}, {End}) are out of KV: session '{sessionId}' needs {more} more positions and {KvBudgetTokens - _reservedTokens} of {KvBudgetTokens} are free");

    /// <summary>Frees a session's KV cache; false when the span did not hold it.</summary>
    public bool CloseSession(string sessionId)
    {
        lock (_gate)
        {
            if (!_sessions.Remove(sessionId, out var session)) return false;
            _reservedTokens -= session.ReservedTokens;
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
            // Blocks past the kept positions go back to the budget, and their pages to the system.
            var keep = BlocksFor(length, session.Capacity);
            if (keep < session.ReservedTokens)
            {
                _reservedTokens -= session.ReservedTokens - keep;
                session.ReservedTokens = keep;
                session.Discard(keep);
            }
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
                ReserveSteps(segments, sessions);
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

    /// <summary>Charges every segment's new blocks, or none when they do not all fit.</summary>
    private void ReserveSteps(ReadOnlySpan<SpanSegment> segments, KvSession[] sessions)
    {
        long more = 0;
        for (var i = 0; i < segments.Length; i++)
            more += Math.Max(0, BlocksFor(segments[i].StartPosition + segments[i].RowCount, sessions[i].Capacity) - sessions[i].ReservedTokens);
        if (more == 0) return;
        if (_reservedTokens + more > KvBudgetTokens) throw Full(segments.Length == 1 ? segments[0].SessionId : $"{segments[0].SessionId} (and {segments.Length - 1} more)", more);
        for (var i = 0; i < segments.Length; i++)
        {
            var grown = BlocksFor(segments[i].StartPosition + segments[i].RowCount, sessions[i].Capacity);
            if (grown <= sessions[i].ReservedTokens) continue;
            _reservedTokens += grown - sessions[i].ReservedTokens;
            sessions[i].ReservedTokens = grown;
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
        var nodes = 256;
        foreach (var block in _blocks) nodes += block.GraphNodes(segments.Length);
        var (ctx, graph) = _runner.Begin(nodes);
        try
        {
            var x = _graph.Begin(ctx, graph, segments, sessions, rows, outputRows, Width, IsFinal);
            var cur = x;
            for (var li = 0; li < _blocks.Length; li++) cur = _blocks[li].Build(_graph, li, cur);
            Ggml.ggml_set_output(cur);
            Ggml.ggml_build_forward_expand(graph, cur);

            _runner.Allocate(graph);
            GraphRunner.Write(x, hidden);
            _graph.WriteInputs();
            _runner.Compute(graph);
            GraphRunner.Read(cur, output);
        }
        finally
        {
            _graph.End();
            _runner.End();
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
}
