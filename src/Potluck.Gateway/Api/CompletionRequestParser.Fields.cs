using System.Globalization;
using System.Text.Json;

namespace Potluck.Gateway.Api;

/// <summary>
/// n, logprobs, top_logprobs and logit_bias, and the fields this gateway cannot honour: a field that would change the
/// output and is unsupported is a 400 naming it; one that does not change the output is type-checked and accepted.
/// </summary>
public static partial class CompletionRequestParser
{
    public const int MaxChoices = 8;
    public const int MaxTopLogprobs = 20;
    public const int MaxCompletionLogprobs = 5;
    public const int MaxLogitBiasEntries = 1024;
    public const float LogitBiasLimit = 100f;

    private static readonly string[] ServiceTiers = ["auto", "default", "flex", "scale", "priority"];
    private static readonly string[] ReasoningEfforts = ["none", "minimal", "low", "medium", "high"];

    private static CompletionRequest ParseChoicesAndLogprobs(JsonElement root, CompletionRequest request)
    {
        RefuseUnsupportedFields(root, request.Kind);
        CheckAcceptedFields(root);
        var n = OptionalInt(root, "n", 1, MaxChoices) ?? 1;
        bool logprobs;
        int top;
        if (request.Kind == CompletionKind.Chat)
        {
            logprobs = OptionalBool(root, "logprobs") ?? false;
            top = OptionalInt(root, "top_logprobs", 0, MaxTopLogprobs) ?? 0;
            if (top > 0 && !logprobs)
                throw Error(ApiError.BadRequest("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs", "invalid_value"));
        }
        else
        {
            var k = OptionalInt(root, "logprobs", 0, MaxCompletionLogprobs);
            logprobs = k is not null;
            top = k ?? 0;
            if (root.TryGetProperty("top_logprobs", out var chatOnly) && chatOnly.ValueKind != JsonValueKind.Null)
                throw Error(ApiError.BadRequest("'top_logprobs' is a chat completions parameter; /v1/completions takes 'logprobs': k (0-5).",
                    "top_logprobs", "unsupported_parameter"));
        }
        return request with { N = n, Logprobs = logprobs, TopLogprobs = top, LogitBias = ParseLogitBias(root) };
    }

    private static ApiError Unsupported(string param, string why) =>
        ApiError.BadRequest($"The '{param}' parameter is not supported: {why}", param, "unsupported_parameter");

    private static bool Present(JsonElement root, string name, out JsonElement value) =>
        root.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null;

    /// <summary>Fields that would change the output and that this gateway does not implement.</summary>
    private static void RefuseUnsupportedFields(JsonElement root, CompletionKind kind)
    {
        if (Present(root, "audio", out _)) throw Error(Unsupported("audio", "this gateway generates text only."));
        if (Present(root, "web_search_options", out _)) throw Error(Unsupported("web_search_options", "this gateway has no web search."));
        if (Present(root, "modalities", out var modalities))
        {
            if (modalities.ValueKind != JsonValueKind.Array) throw Error(ApiError.WrongType("modalities", "an array of strings"));
            foreach (var modality in modalities.EnumerateArray())
            {
                if (modality.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType("modalities", "an array of strings"));
                if (!modality.ValueEquals("text"))
                    throw Error(ApiError.BadRequest("Only 'modalities': [\"text\"] is supported; this gateway generates text only.", "modalities", "unsupported_value"));
            }
        }
        if (Present(root, "verbosity", out var verbosity))
        {
            if (verbosity.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType("verbosity", "a string"));
            if (!verbosity.ValueEquals("medium"))
                throw Error(ApiError.BadRequest("Only 'verbosity': 'medium' (the default) is supported; the model's length is set by max_tokens and stop.",
                    "verbosity", "unsupported_value"));
        }
        if (kind == CompletionKind.Text)
        {
            if (OptionalInt(root, "best_of", 1, MaxChoices) is > 1)
                throw Error(Unsupported("best_of", "only best_of 1; ask for n choices instead."));
            if (OptionalBool(root, "echo") == true) throw Error(Unsupported("echo", "the prompt is not echoed back."));
            if (Present(root, "suffix", out var suffix))
            {
                if (suffix.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType("suffix", "a string"));
                if (Text(suffix, "suffix").Length > 0) throw Error(Unsupported("suffix", "no fill-in-the-middle; send the text before the gap as the prompt."));
            }
        }
    }

    /// <summary>Fields that do not change the output: accepted (and ignored) when well-formed.</summary>
    private static void CheckAcceptedFields(JsonElement root)
    {
        OptionalBool(root, "store");
        OptionalString(root, "service_tier", ServiceTiers);
        OptionalString(root, "reasoning_effort", ReasoningEfforts);
        OptionalString(root, "safety_identifier", null);
        OptionalString(root, "prompt_cache_key", null);
        if (Present(root, "metadata", out var metadata))
        {
            if (metadata.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType("metadata", "an object of string values"));
            var pairs = 0;
            foreach (var pair in metadata.EnumerateObject())
            {
                if (++pairs > 16) throw Error(ApiError.OutOfRange("metadata", "at most 16 key-value pairs"));
                if (pair.Value.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType("metadata", "an object of string values"));
                if (Text(pair.Value, "metadata").Length > 512) throw Error(ApiError.OutOfRange("metadata", "values of at most 512 characters"));
                if (PropertyName(pair, "metadata").Length > 64) throw Error(ApiError.OutOfRange("metadata", "keys of at most 64 characters"));
            }
        }
        // Predicted outputs only speed OpenAI up; the answer is the same, so a well-formed prediction is accepted.
        if (Present(root, "prediction", out var prediction))
        {
            if (prediction.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType("prediction", "an object"));
            if (!prediction.TryGetProperty("type", out var type) || !type.ValueEquals("content"))
                throw Error(ApiError.OutOfRange("prediction.type", "'content'"));
        }
    }

    private static void OptionalString(JsonElement root, string name, string[]? allowed)
    {
        if (!Present(root, name, out var value)) return;
        if (value.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType(name, "a string"));
        var text = Text(value, name);
        if (text.Length > MaxNameLength) throw Error(ApiError.OutOfRange(name, $"at most {MaxNameLength} characters"));
        if (allowed is not null && Array.IndexOf(allowed, text) < 0)
            throw Error(ApiError.OutOfRange(name, "one of " + string.Join(", ", allowed.Select(a => $"'{a}'"))));
    }

    private static string PropertyName(JsonProperty property, string param)
    {
        try
        {
            return property.Name;
        }
        catch (InvalidOperationException)
        {
            throw Error(ApiError.BadRequest($"Invalid key in '{param}': not valid Unicode (a lone surrogate escape?).", param, "invalid_string"));
        }
    }

    /// <summary>
    /// logit_bias: {"token id": bias in [-100, 100]}. The bias is added to the logit; -100 bans the token outright
    /// (stored as -infinity, as a plain -100 might not outweigh a large logit). Ids are checked against the
    /// vocabulary once the model is known (<see cref="CheckLogitBias"/>).
    /// </summary>
    private static Dictionary<int, float>? ParseLogitBias(JsonElement root)
    {
        if (!Present(root, "logit_bias", out var value)) return null;
        if (value.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType("logit_bias", "an object mapping token ids to numbers"));
        var bias = new Dictionary<int, float>();
        foreach (var entry in value.EnumerateObject())
        {
            if (bias.Count >= MaxLogitBiasEntries) throw Error(ApiError.OutOfRange("logit_bias", $"at most {MaxLogitBiasEntries} entries"));
            var key = PropertyName(entry, "logit_bias");
            var shown = key.Length <= 32 ? key : key[..32] + "...";
            if (key.Length is 0 or > 10 || !int.TryParse(key, NumberStyles.None, CultureInfo.InvariantCulture, out var token))
                throw Error(ApiError.BadRequest($"Invalid key in 'logit_bias': '{shown}' is not a token id (a non-negative decimal integer).",
                    "logit_bias", "invalid_value"));
            var param = $"logit_bias.{token}";
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetDouble(out var number) || !double.IsFinite(number))
                throw Error(ApiError.WrongType(param, "a number"));
            if (number < -LogitBiasLimit || number > LogitBiasLimit) throw Error(ApiError.OutOfRange(param, "between -100 and 100"));
            if (!bias.TryAdd(token, number <= -LogitBiasLimit ? float.NegativeInfinity : (float)number))
                throw Error(ApiError.BadRequest($"'logit_bias' names token {token} twice.", "logit_bias", "invalid_value"));
        }
        return bias.Count == 0 ? null : bias;
    }

    /// <summary>logit_bias against the served vocabulary: every id in range, and not every token banned.</summary>
    public static void CheckLogitBias(CompletionRequest request, int vocabSize)
    {
        if (request.LogitBias is not { } bias) return;
        var banned = 0;
        foreach (var (token, value) in bias)
        {
            if (token >= vocabSize)
                throw Error(ApiError.BadRequest($"Invalid key in 'logit_bias': token {token} is outside the vocabulary [0, {vocabSize}).",
                    "logit_bias", "invalid_value"));
            if (float.IsNegativeInfinity(value)) banned++;
        }
        if (banned >= vocabSize) throw Error(ApiError.BadRequest("'logit_bias' bans every token of the vocabulary.", "logit_bias", "invalid_value"));
    }
}
