using Potluck.Inference.Text;

namespace Potluck.Gateway.Streaming;

/// <summary>
/// A validated generation: prompt tokens, budget, sampling and stop sequences. <paramref name="TopLogprobs"/>: null for
/// no logprobs, otherwise record each token's logprob and that many alternatives (see <see cref="TokenLogprobs"/>).
/// </summary>
public sealed record GenerationRequest(
    string Endpoint,
    int[] PromptTokens,
    int MaxTokens,
    SamplingOptions Sampling,
    IReadOnlyList<string> Stop,
    string? User,
    bool IgnoreEos = false,
    int? TopLogprobs = null);

/// <summary>How a generation ended.</summary>
public enum FinishReason
{
    Stop,
    Length,
}
