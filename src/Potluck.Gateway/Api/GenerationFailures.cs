using Potluck.Gateway.Admission;
using Potluck.Gateway.Streaming;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Api;

/// <summary>How a generation that failed is told to the client, the same on every endpoint (OpenAI and Anthropic).</summary>
internal static class GenerationFailures
{
    /// <summary>The code of a request the admission queue turned away (429 with Retry-After).</summary>
    public const string PoolAtCapacity = "pool_at_capacity";

    /// <summary>
    /// The error for a pool at capacity (429: the admission queue is full or its wait timed out, with Retry-After; or no
    /// KV room came back within KvWaitTimeout), a failure of the pool (503: no chain of stages, or a route that could
    /// not be replaced) or of the request's grammar (400: refused by llama.cpp, stuck, or too slow per token); null for
    /// anything else.
    /// </summary>
    /// <param name="grammarSource">The request fields the grammar came from, named in the message.</param>
    public static ApiError? ToApiError(Exception e, string grammarSource) => e switch
    {
        // OpenAI answers its own overload as a 429 server_error; SDKs retry it after Retry-After.
        PoolAtCapacityException capacity => new ApiError(429, e.Message, ApiError.ServerError, null, PoolAtCapacity) { RetryAfter = capacity.RetryAfter },
        PoolUnavailableException => new ApiError(503, e.Message, ApiError.ServerError, null, "pool_unavailable"),
        // Room comes back as sessions finish: a few seconds is a fair first retry.
        PoolOutOfKvException => new ApiError(429, e.Message, ApiError.ServerError, null, PoolAtCapacity) { RetryAfter = TimeSpan.FromSeconds(5) },
        RouteFailedException => new ApiError(503, e.Message, ApiError.ServerError, null, "route_failed"),
        GrammarBudgetExceededException => Grammar(e, grammarSource, "grammar_too_slow"),
        GrammarException => Grammar(e, grammarSource, "invalid_grammar"),
        _ => null,
    };

    private static ApiError Grammar(Exception e, string source, string code) =>
        ApiError.BadRequest($"The output grammar (from {source}) failed: {e.Message}.", null, code);
}
