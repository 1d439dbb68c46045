using Potluck.Inference.Text;

namespace Potluck.Gateway.Streaming;

/// <summary>A validated generation: prompt tokens, budget, sampling and stop sequences.</summary>
public sealed record GenerationRequest(
    string Endpoint,
    int[] PromptTokens,
    int MaxTokens,
    SamplingOptions Sampling,
    IReadOnlyList<string> Stop,
    string? User,
    bool IgnoreEos = false)
{
    /// <summary>Decode control tokens as their text (tool-call and reasoning markers), for the chat output parser.</summary>
    public bool RenderSpecialTokens { get; init; }
}

/// <summary>How a generation ended.</summary>
public enum FinishReason
{
    Stop,
    Length,
}
