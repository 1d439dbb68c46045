namespace Potluck.Inference.Engine;

/// <summary>
/// One session's rows within a span step. Rows are consecutive positions starting at
/// <see cref="StartPosition"/>, which must equal the session's current cache length
/// (truncate first to rewind).
/// </summary>
/// <param name="SessionId">A session opened on the span.</param>
/// <param name="StartPosition">Absolute position of the first row.</param>
/// <param name="RowCount">Rows of this session in the step's hidden-state input.</param>
/// <param name="LastRowOnly">Return only the last row's output; allowed on the final span only.</param>
public readonly record struct SpanSegment(string SessionId, int StartPosition, int RowCount, bool LastRowOnly = false)
{
    public int OutputRows => LastRowOnly ? 1 : RowCount;
}

/// <summary>Per-span settings a node chooses.</summary>
public sealed record SpanOptions
{
    /// <summary>Threads ggml computes with.</summary>
    public int Threads { get; init; } = Math.Max(1, Environment.ProcessorCount);

    /// <summary>Total KV tokens all sessions of this span may reserve together; null means 4 full contexts.</summary>
    public long? KvBudgetTokens { get; init; }
}
