namespace Potluck.Inference.Engine;

/// <summary>
/// Head plus a chain of spans in one process: embedding → spans → logits for one session. What a pool does
/// across machines, done locally; used by benchmarks and as the single-process reference for cluster tests.
/// </summary>
public sealed class LocalPipeline : IDisposable
{
    private readonly ModelHead _head;
    private readonly IReadOnlyList<LayerSpan> _spans;
    private float[] _a = [];
    private float[] _b = [];

    public LocalPipeline(ModelHead head, IReadOnlyList<LayerSpan> spans)
    {
        if (spans.Count == 0) throw new ArgumentException("at least one span", nameof(spans));
        for (var i = 0; i < spans.Count; i++)
        {
            var expectedStart = i == 0 ? 0 : spans[i - 1].End;
            if (spans[i].Start != expectedStart)
                throw new LayerRangeException($"span {i} starts at layer {spans[i].Start}, expected {expectedStart}");
        }
        if (!spans[^1].IsFinal) throw new LayerRangeException($"the chain ends at layer {spans[^1].End}, not the model's last");
        _head = head;
        _spans = spans;
    }

    public void OpenSession(string sessionId, int maxTokens)
    {
        foreach (var s in _spans) s.OpenSession(sessionId, maxTokens);
    }

    public void CloseSession(string sessionId)
    {
        foreach (var s in _spans) s.CloseSession(sessionId);
    }

    /// <summary>Runs <paramref name="tokens"/> at <paramref name="startPosition"/> and writes the last token's logits.</summary>
    public void Evaluate(string sessionId, int startPosition, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        var width = _head.Width;
        var rows = tokens.Length;
        Ensure(ref _a, rows * width);
        Ensure(ref _b, rows * width);
        var input = _a.AsSpan(0, rows * width);
        _head.Embed(tokens, input);
        for (var i = 0; i < _spans.Count; i++)
        {
            var last = i == _spans.Count - 1;
            var segment = new SpanSegment(sessionId, startPosition, rows, LastRowOnly: last);
            var output = _b.AsSpan(0, segment.OutputRows * width);
            _spans[i].Forward([segment], input, output);
            (_a, _b) = (_b, _a);
            input = _a.AsSpan(0, output.Length);
        }
        _head.Logits(input, 1, logits);
    }

    private static void Ensure(ref float[] buffer, int length)
    {
        if (buffer.Length < length) buffer = new float[length];
    }

    public void Dispose()
    {
    }
}
