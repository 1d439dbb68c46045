using Potluck.Inference.Engine;

namespace Potluck.Node.Compute;

/// <summary>
/// What a stage computes with. The real one is <see cref="LayerSpanCompute"/>; <see cref="EchoCompute"/>
/// exists only to measure transport cost (hop benchmark) and is never served to users.
/// Calls are serialized by <see cref="SpanHost"/>.
/// </summary>
public interface IStageCompute : IDisposable
{
    string ModelId { get; }
    int LayerStart { get; }
    int LayerEnd { get; }
    int LayerCount { get; }
    int Width { get; }
    bool IsFinal { get; }
    int ContextLength { get; }
    long KvBudgetTokens { get; }
    long FreeKvTokens { get; }
    long KvBytesPerToken { get; }
    int SessionCount { get; }

    void OpenSession(string sessionId, int maxTokens);
    /// <summary>Charges the KV the session needs to hold <paramref name="length"/> positions; throws KvBudgetExceededException when full.</summary>
    void Reserve(string sessionId, int length);
    bool CloseSession(string sessionId);
    int SessionLength(string sessionId);
    void Truncate(string sessionId, int length);
    void Forward(ReadOnlySpan<SpanSegment> segments, ReadOnlySpan<float> hidden, Span<float> output);
}
