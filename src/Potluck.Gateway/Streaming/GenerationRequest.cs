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
    bool IgnoreEos = false);

/// <summary>How a generation ended.</summary>
public enum FinishReason
{
    Stop,
    Length,
}
