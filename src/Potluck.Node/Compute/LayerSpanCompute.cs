using Potluck.Inference.Engine;

namespace Potluck.Node.Compute;

/// <summary>The engine's layer span, on a model shared by every span of the process.</summary>
public sealed class LayerSpanCompute : IStageCompute
{
    private readonly LayerSpan _span;
    private readonly SharedModel.Lease _model;

    public LayerSpanCompute(SharedModel.Lease model, int start, int end, SpanOptions? options = null)
    {
        _model = model;
        try
        {
            _span = new LayerSpan(model.Model, start, end, options);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public string ModelId => _model.Model.Info.ModelId;
    public int LayerStart => _span.Start;
    public int LayerEnd => _span.End;
    public int LayerCount => _model.Model.Info.LayerCount;
    public int Width => _span.Width;
    public bool IsFinal => _span.IsFinal;
    public int ContextLength => _model.Model.Info.ContextLength;
    public long KvBudgetTokens => _span.KvBudgetTokens;
    public long FreeKvTokens => _span.FreeKvTokens;
    public long KvBytesPerToken => _span.KvBytesPerToken;
    public int SessionCount => _span.Sessions.Count;

    public void OpenSession(string sessionId, int maxTokens) => _span.OpenSession(sessionId, maxTokens);
    public bool CloseSession(string sessionId) => _span.CloseSession(sessionId);
    public void Reserve(string sessionId, int length) => _span.Reserve(sessionId, length);
    public int SessionLength(string sessionId) => _span.SessionLength(sessionId);
    public void Truncate(string sessionId, int length) => _span.Truncate(sessionId, length);

    public void Forward(ReadOnlySpan<SpanSegment> segments, ReadOnlySpan<float> hidden, Span<float> output) =>
        _span.Forward(segments, hidden, output);

    public void Dispose()
    {
        _span.Dispose();
        _model.Dispose();
    }
}
