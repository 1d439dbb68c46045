using Potluck.Inference;
using Potluck.Inference.Engine;

namespace Potluck.Node.Compute;

/// <summary>
/// Transport-only stage for the hop benchmark: output rows are the input rows. Lets the benchmark
/// measure what a hop costs (framing, gRPC, F16 conversion, relaying) without any layer compute.
/// </summary>
public sealed class EchoCompute(int width, int layerStart, int layerEnd, int layerCount, long kvBudgetTokens = 1 << 20) : IStageCompute
{
    private readonly Dictionary<string, (int Max, int Length)> _sessions = new(StringComparer.Ordinal);
    private long _reserved;

    public string ModelId => "echo";
    public int LayerStart => layerStart;
    public int LayerEnd => layerEnd;
    public int LayerCount => layerCount;
    public int Width => width;
    public bool IsFinal => layerEnd == layerCount;
    public int ContextLength => 1 << 20;
    public long KvBudgetTokens => kvBudgetTokens;
    public long FreeKvTokens => kvBudgetTokens - _reserved;
    public long KvBytesPerToken => 0;
    public int SessionCount => _sessions.Count;

    public void OpenSession(string sessionId, int maxTokens)
    {
        if (_sessions.ContainsKey(sessionId)) return;
        if (maxTokens > FreeKvTokens) throw new KvBudgetExceededException($"{maxTokens} tokens asked, {FreeKvTokens} free");
        _sessions[sessionId] = (maxTokens, 0);
        _reserved += maxTokens;
    }

    // The echo stage charges a session's whole size at open; a step only checks it stays inside.
    public void Reserve(string sessionId, int length)
    {
        var s = _sessions.TryGetValue(sessionId, out var v) ? v : throw new UnknownSessionException(sessionId);
        if (length > s.Max) throw new ContextOverflowException($"{length} > {s.Max}");
    }

    public bool CloseSession(string sessionId)
    {
        if (!_sessions.Remove(sessionId, out var s)) return false;
        _reserved -= s.Max;
        return true;
    }

    public int SessionLength(string sessionId) =>
        _sessions.TryGetValue(sessionId, out var s) ? s.Length : throw new UnknownSessionException(sessionId);

    public void Truncate(string sessionId, int length)
    {
        var s = _sessions.TryGetValue(sessionId, out var v) ? v : throw new UnknownSessionException(sessionId);
        _sessions[sessionId] = (s.Max, Math.Min(s.Length, length));
    }

    public void Forward(ReadOnlySpan<SpanSegment> segments, ReadOnlySpan<float> hidden, Span<float> output)
    {
        var inRow = 0;
        var outRow = 0;
        foreach (var segment in segments)
        {
            var s = _sessions.TryGetValue(segment.SessionId, out var v) ? v : throw new UnknownSessionException(segment.SessionId);
            if (segment.StartPosition != s.Length) throw new PositionMismatchException($"start {segment.StartPosition} != length {s.Length}");
            if (s.Length + segment.RowCount > s.Max) throw new ContextOverflowException($"{s.Length + segment.RowCount} > {s.Max}");
            _sessions[segment.SessionId] = (s.Max, s.Length + segment.RowCount);
            var first = segment.LastRowOnly ? inRow + segment.RowCount - 1 : inRow;
            var rows = segment.OutputRows;
            hidden.Slice(first * width, rows * width).CopyTo(output.Slice(outRow * width, rows * width));
            inRow += segment.RowCount;
            outRow += rows;
        }
    }

    public void Dispose() { }
}
