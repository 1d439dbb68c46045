using System.Text.Json;
using System.Text.Unicode;
using Potluck.Gateway.Chat;

namespace Potluck.Gateway.Api;

/// <summary>Which OpenAI endpoint a request came in on.</summary>
public enum CompletionKind
{
    Chat,
    Text,
}

/// <summary>One chat message after validation (content flattened to text).</summary>
public sealed record ChatMessage(string Role, string Content)
{
    /// <summary>An assistant message's tool calls (arguments as JSON text).</summary>
    public IReadOnlyList<ToolCall> ToolCalls { get; init; } = [];
    /// <summary>A tool message's answer to this call id.</summary>
    public string? ToolCallId { get; init; }
    /// <summary>The optional participant or function name.</summary>
    public string? Name { get; init; }
    /// <summary>An assistant message's earlier reasoning (llama.cpp's reasoning_content), shown where the template keeps it.</summary>
    public string? ReasoningContent { get; init; }
}

/// <summary>A validated /v1/chat/completions or /v1/completions request.</summary>
public sealed record CompletionRequest
{
    public required CompletionKind Kind { get; init; }
    public required string Model { get; init; }
    public IReadOnlyList<ChatMessage> Messages { get; init; } = [];
    public string? PromptText { get; init; }
    public int[]? PromptTokens { get; init; }
    public int? MaxTokens { get; init; }
    public float Temperature { get; init; } = 1f;
    public float TopP { get; init; } = 1f;
    public int TopK { get; init; }
    public float MinP { get; init; }
    public long? Seed { get; init; }
    public IReadOnlyList<string> Stop { get; init; } = [];
    public float PresencePenalty { get; init; }
    public float FrequencyPenalty { get; init; }
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }
    public string? User { get; init; }
    /// <summary>llama.cpp server extension: keep going past end-of-generation tokens (benchmarks, fixed-length runs).</summary>
    public bool IgnoreEos { get; init; }
    /// <summary>Functions the model may call (tools, or legacy functions).</summary>
    public IReadOnlyList<ToolDefinition> Tools { get; init; } = [];
    public ToolChoice ToolChoice { get; init; } = ToolChoice.Auto;
    public bool ParallelToolCalls { get; init; } = true;
    /// <summary>From response_format: the grammar every sampled token must follow; null for free text.</summary>
    public Potluck.Inference.Text.GrammarSpec? Grammar { get; init; }
}

/// <summary>
/// Validates OpenAI request bodies field by field, so every caller mistake becomes a precise 400 naming the
/// parameter rather than a generic failure. Unknown fields are ignored, as SDKs send extras.
/// </summary>
public static partial class CompletionRequestParser
{
    public const int MaxStopSequences = 4;
    public const int MaxMessages = 4096;
    public const int MaxNameLength = 256;

    private static readonly HashSet<string> Roles = new(StringComparer.Ordinal) { "system", "developer", "user", "assistant", "tool", "function" };

    /// <param name="body">The request body; parsed in place (a 4 MiB body is not copied again).</param>
    public static CompletionRequest Parse(ReadOnlyMemory<byte> body, CompletionKind kind)
    {
        if (body.IsEmpty) throw Error(ApiError.BadRequest("The request body is empty; send a JSON object.", code: "invalid_json"));
        // JSON text is UTF-8 (RFC 8259); System.Text.Json checks it only when a string is read, and then throws
        // InvalidOperationException (a 500), so the whole body is checked up front.
        if (!Utf8.IsValid(body.Span))
            throw Error(ApiError.BadRequest($"The request body is not valid UTF-8 (first bad byte at offset {InvalidUtf8At(body.Span)}).", code: "invalid_json"));
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 32 });
        }
        catch (JsonException e)
        {
            throw Error(ApiError.BadRequest($"The request body is not valid JSON: {e.Message}", code: "invalid_json"));
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw Error(ApiError.BadRequest("The request body must be a JSON object.", code: "invalid_json"));

            var model = RequiredString(root, "model");
            var request = new CompletionRequest { Kind = kind, Model = model };
            if (kind == CompletionKind.Chat)
            {
                request = request with { Messages = ParseMessages(root) };
            }
            else
            {
                var (text, tokens) = ParsePrompt(root);
                request = request with { PromptText = text, PromptTokens = tokens };
            }

            if (kind == CompletionKind.Chat) request = ParseTools(root, request);

            var maxTokens = OptionalInt(root, "max_tokens", 1, int.MaxValue);
            var maxCompletion = OptionalInt(root, "max_completion_tokens", 1, int.MaxValue);
            var n = OptionalInt(root, "n", 1, 128);
            if (n is > 1) throw Error(ApiError.BadRequest("Only n=1 is supported.", "n", "unsupported_value"));
            var stream = OptionalBool(root, "stream") ?? false;
            var includeUsage = false;
            if (root.TryGetProperty("stream_options", out var streamOptions) && streamOptions.ValueKind != JsonValueKind.Null)
            {
                if (streamOptions.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType("stream_options", "an object"));
                if (!stream) throw Error(ApiError.BadRequest("The 'stream_options' parameter is only allowed when 'stream' is true.", "stream_options"));
                includeUsage = OptionalBool(streamOptions, "include_usage", "stream_options.include_usage") ?? false;
            }
            var temperature = OptionalFloat(root, "temperature", 0, 2) ?? 1f;
            var topP = OptionalFloat(root, "top_p", 0, 1) ?? 1f;
            var minP = OptionalFloat(root, "min_p", 0, 1) ?? 0f;
            var topK = OptionalInt(root, "top_k", 0, 1_000_000) ?? 0;
            var presence = OptionalFloat(root, "presence_penalty", -2, 2) ?? 0f;
            var frequency = OptionalFloat(root, "frequency_penalty", -2, 2) ?? 0f;
            long? seed = null;
            if (root.TryGetProperty("seed", out var seedElement) && seedElement.ValueKind != JsonValueKind.Null)
            {
                if (seedElement.ValueKind != JsonValueKind.Number || !seedElement.TryGetInt64(out var s))
                    throw Error(ApiError.WrongType("seed", "an integer"));
                seed = s;
            }
            string? user = null;
            if (root.TryGetProperty("user", out var userElement) && userElement.ValueKind != JsonValueKind.Null)
            {
                if (userElement.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType("user", "a string"));
                user = Text(userElement, "user");
                if (user!.Length > 256) throw Error(ApiError.OutOfRange("user", "at most 256 characters"));
            }
            return request with
            {
                MaxTokens = maxCompletion ?? maxTokens,
                Temperature = temperature,
                TopP = topP,
                TopK = topK,
                MinP = minP,
                Seed = seed,
                Stop = ParseStop(root),
                PresencePenalty = presence,
                FrequencyPenalty = frequency,
                Stream = stream,
                IncludeUsage = includeUsage,
                User = user,
                IgnoreEos = OptionalBool(root, "ignore_eos") ?? false,
                Grammar = ParseResponseFormat(root),
            };
        }
    }

    private static ApiErrorException Error(ApiError error) => new(error);

    private static int InvalidUtf8At(ReadOnlySpan<byte> bytes)
    {
        var at = 0;
        while (at < bytes.Length && System.Text.Rune.DecodeFromUtf8(bytes[at..], out _, out var consumed) == System.Buffers.OperationStatus.Done)
            at += consumed;
        return at;
    }

    /// <summary>
    /// A JSON string as .NET text. Escapes can still spell a lone surrogate ("\ud800"), which is not a Unicode
    /// scalar value: GetString throws InvalidOperationException for it, so it becomes a 400 naming the parameter.
    /// </summary>
    internal static string Text(JsonElement value, string param)
    {
        try
        {
            return value.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw Error(ApiError.BadRequest($"Invalid value for '{param}': the string is not valid Unicode (a lone surrogate escape such as \\ud800?).",
                param, "invalid_string"));
        }
    }

    private static string RequiredString(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing(name));
        if (value.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType(name, "a string"));
        var text = Text(value, name);
        if (text.Length == 0) throw Error(ApiError.OutOfRange(name, "a non-empty string"));
        // Echoed in errors (unknown model): a megabyte of it must not come back in the answer.
        if (text.Length > MaxNameLength) throw Error(ApiError.OutOfRange(name, $"at most {MaxNameLength} characters"));
        return text;
    }

    private static int? OptionalInt(JsonElement root, string name, int min, int max)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        if (value.ValueKind != JsonValueKind.Number) throw Error(ApiError.WrongType(name, "an integer"));
        if (!value.TryGetInt64(out var number))
        {
            // 5.0 is an integer to JSON; 5.5 and 1e400 are not.
            if (value.TryGetDouble(out var d) && double.IsFinite(d) && d == Math.Floor(d) && Math.Abs(d) < 9e15) number = (long)d;
            else throw Error(ApiError.WrongType(name, "an integer"));
        }
        if (number < min || number > max) throw Error(ApiError.OutOfRange(name, max == int.MaxValue ? $"at least {min}" : $"between {min} and {max}"));
        return (int)number;
    }

    private static float? OptionalFloat(JsonElement root, string name, float min, float max)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetDouble(out var number) || !double.IsFinite(number))
            throw Error(ApiError.WrongType(name, "a number"));
        if (number < min || number > max) throw Error(ApiError.OutOfRange(name, $"between {min} and {max}"));
        return (float)number;
    }

    private static bool? OptionalBool(JsonElement root, string name, string? displayName = null)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Error(ApiError.WrongType(displayName ?? name, "a boolean")),
        };
    }

    private static IReadOnlyList<string> ParseStop(JsonElement root)
    {
        if (!root.TryGetProperty("stop", out var value) || value.ValueKind == JsonValueKind.Null) return [];
        if (value.ValueKind == JsonValueKind.String)
        {
            var single = Text(value, "stop");
            if (single.Length == 0) throw Error(ApiError.OutOfRange("stop", "non-empty strings"));
            return [single];
        }
        if (value.ValueKind != JsonValueKind.Array) throw Error(ApiError.WrongType("stop", "a string or an array of strings"));
        if (value.GetArrayLength() > MaxStopSequences) throw Error(ApiError.OutOfRange("stop", $"at most {MaxStopSequences} sequences"));
        var stops = new List<string>();
        foreach (var item in value.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType("stop", "a string or an array of strings"));
            var text = Text(item, "stop");
            if (text.Length == 0) throw Error(ApiError.OutOfRange("stop", "non-empty strings"));
            if (text.Length > 256) throw Error(ApiError.OutOfRange("stop", "sequences of at most 256 characters"));
            stops.Add(text);
        }
        return stops;
    }

    private static IReadOnlyList<ChatMessage> ParseMessages(JsonElement root)
    {
        if (!root.TryGetProperty("messages", out var messages) || messages.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing("messages"));
        if (messages.ValueKind != JsonValueKind.Array) throw Error(ApiError.WrongType("messages", "an array"));
        var count = messages.GetArrayLength();
        if (count == 0) throw Error(ApiError.OutOfRange("messages", "a non-empty array"));
        if (count > MaxMessages) throw Error(ApiError.OutOfRange("messages", $"at most {MaxMessages} messages"));
        var list = new List<ChatMessage>(count);
        var index = 0;
        foreach (var message in messages.EnumerateArray())
        {
            var at = $"messages[{index}]";
            if (message.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType(at, "an object"));
            if (!message.TryGetProperty("role", out var roleElement) || roleElement.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing($"{at}.role"));
            if (roleElement.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType($"{at}.role", "a string"));
            var role = Text(roleElement, $"{at}.role");
            if (!Roles.Contains(role))
                throw Error(ApiError.OutOfRange($"{at}.role", "one of 'system', 'developer', 'user', 'assistant', 'tool', 'function'"));
            var content = ParseContent(message, at, role);
            // The chat template knows system/user/assistant; developer is OpenAI's new name for system.
            list.Add(ParseMessageTools(message, at, new ChatMessage(role == "developer" ? "system" : role, content)));
            index++;
        }
        return list;
    }

    private static string ParseContent(JsonElement message, string at, string role)
    {
        if (!message.TryGetProperty("content", out var content) || content.ValueKind == JsonValueKind.Null)
        {
            // Assistant turns may carry only tool calls.
            if (role == "assistant") return "";
            throw Error(ApiError.Missing($"{at}.content"));
        }
        if (content.ValueKind == JsonValueKind.String) return Text(content, $"{at}.content");
        if (content.ValueKind != JsonValueKind.Array) throw Error(ApiError.WrongType($"{at}.content", "a string or an array of content parts"));
        var text = new System.Text.StringBuilder();
        var part = 0;
        foreach (var item in content.EnumerateArray())
        {
            var partAt = $"{at}.content[{part}]";
            if (item.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType(partAt, "an object"));
            if (!item.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String) throw Error(ApiError.Missing($"{partAt}.type"));
            var partType = Text(type, $"{partAt}.type");
            if (partType != "text")
                throw Error(ApiError.BadRequest($"Content part type '{(partType.Length <= 64 ? partType : partType[..64] + "...")}' is not supported; this model takes text only.", $"{partAt}.type", "unsupported_value"));
            if (!item.TryGetProperty("text", out var partText) || partText.ValueKind != JsonValueKind.String) throw Error(ApiError.Missing($"{partAt}.text"));
            text.Append(Text(partText, $"{partAt}.text"));
            part++;
        }
        return text.ToString();
    }

    private static (string? Text, int[]? Tokens) ParsePrompt(JsonElement root)
    {
        if (!root.TryGetProperty("prompt", out var prompt) || prompt.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing("prompt"));
        const string expected = "a string, an array of one string, or an array of token ids";
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String:
                return (Text(prompt, "prompt"), null);
            case JsonValueKind.Array:
                var length = prompt.GetArrayLength();
                if (length == 0) throw Error(ApiError.OutOfRange("prompt", "non-empty"));
                var first = prompt[0];
                if (first.ValueKind == JsonValueKind.String)
                {
                    if (length != 1) throw Error(ApiError.BadRequest("Only one prompt per request is supported.", "prompt", "unsupported_value"));
                    return (Text(first, "prompt"), null);
                }
                if (first.ValueKind == JsonValueKind.Array)
                {
                    if (length != 1) throw Error(ApiError.BadRequest("Only one prompt per request is supported.", "prompt", "unsupported_value"));
                    return (null, TokenArray(first, expected));
                }
                return (null, TokenArray(prompt, expected));
            default:
                throw Error(ApiError.WrongType("prompt", expected));
        }
    }

    private static int[] TokenArray(JsonElement array, string expected)
    {
        var tokens = new int[array.GetArrayLength()];
        if (tokens.Length == 0) throw Error(ApiError.OutOfRange("prompt", "non-empty"));
        var i = 0;
        foreach (var item in array.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out var token)) throw Error(ApiError.WrongType("prompt", expected));
            tokens[i++] = token;
        }
        return tokens;
    }
}
