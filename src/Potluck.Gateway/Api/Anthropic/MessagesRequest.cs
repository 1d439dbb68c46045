using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace Potluck.Gateway.Api.Anthropic;

/// <summary>
/// A validated /v1/messages request, mapped onto the chat request the OpenAI endpoint builds, so both run through
/// one pipeline (tokenizing, routing, sampling).
/// </summary>
/// <param name="Chat">The conversation as chat messages (the system prompt first), sampling, stop sequences.</param>
/// <param name="Prefill">Text of a final assistant turn: the answer continues it (Anthropic's "prefill").</param>
public sealed record MessagesRequest(CompletionRequest Chat, string? Prefill);

/// <summary>
/// Validates Anthropic Messages request bodies field by field; every caller mistake is an ApiError (400) naming
/// the field, written in Anthropic's error shape by <see cref="AnthropicEndpoints"/>.
/// </summary>
public static class MessagesRequestParser
{
    public const int MaxStopSequences = 16;
    public const int MaxStopSequenceLength = 256;
    public const int MaxMessages = CompletionRequestParser.MaxMessages;
    public const int MaxBlocksPerMessage = 1024;

    // Fields of Anthropic's API that would change the answer and that this gateway cannot honour.
    private static readonly string[] UnsupportedFields = ["container", "mcp_servers", "context_management", "output_format", "output_config"];

    public static MessagesRequest Parse(ReadOnlyMemory<byte> body)
    {
        if (body.IsEmpty) throw Error("The request body is empty; send a JSON object.");
        // Checked up front: System.Text.Json checks UTF-8 only when a string is read, and then throws a non-JSON exception.
        if (!Utf8.IsValid(body.Span)) throw Error("The request body is not valid UTF-8.");
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 32 });
        }
        catch (JsonException e)
        {
            throw Error($"The request body is not valid JSON: {e.Message}");
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw Error("The request body must be a JSON object.");
            foreach (var field in UnsupportedFields)
                if (Present(root, field, out _))
                    throw Error($"{field}: this gateway does not support '{field}'.", field);

            var model = RequiredString(root, "model", CompletionRequestParser.MaxNameLength);
            // Anthropic requires max_tokens: there is no "until the context is full" default.
            var maxTokens = OptionalInt(root, "max_tokens", 1, int.MaxValue) ?? throw Missing("max_tokens");
            var (messages, prefill) = ParseMessages(root);
            var system = ParseSystem(root);
            if (system is not null) messages.Insert(0, new ChatMessage("system", system));
            ParseThinking(root);
            var temperature = OptionalFloat(root, "temperature", 0, 1) ?? 1f;
            var topP = OptionalFloat(root, "top_p", 0, 1) ?? 1f;
            var topK = OptionalInt(root, "top_k", 0, 1_000_000) ?? 0;
            var stream = OptionalBool(root, "stream") ?? false;
            ParseServiceTier(root);

            var chat = new CompletionRequest
            {
                Kind = CompletionKind.Chat,
                Model = model,
                Messages = messages,
                MaxTokens = maxTokens,
                Temperature = temperature,
                TopP = topP,
                TopK = topK,
                Stop = ParseStopSequences(root),
                Stream = stream,
                User = ParseMetadata(root),
            };
            return new MessagesRequest(chat, prefill);
        }
    }

    private static (List<ChatMessage> Messages, string? Prefill) ParseMessages(JsonElement root)
    {
        if (!Present(root, "messages", out var messages)) throw Missing("messages");
        if (messages.ValueKind != JsonValueKind.Array) throw WrongType("messages", "an array");
        var count = messages.GetArrayLength();
        if (count == 0) throw Error("messages: at least one message is required.", "messages");
        if (count > MaxMessages) throw Error($"messages: at most {MaxMessages} messages are allowed.", "messages");

        var list = new List<ChatMessage>(count);
        string? prefill = null;
        var index = 0;
        foreach (var message in messages.EnumerateArray())
        {
            var at = $"messages.{index}";
            if (message.ValueKind != JsonValueKind.Object) throw WrongType(at, "an object");
            var role = RequiredString(message, "role", 32, at + ".role");
            if (role is not ("user" or "assistant" or "system")) throw Error($"{at}.role: must be 'user', 'assistant' or 'system'.", at + ".role");
            var text = ParseContent(message, at, role);
            var last = index == count - 1;
            if (role == "assistant" && last)
            {
                // A final assistant turn is a prefill: the model's answer continues it.
                if (text.Length > 0 && char.IsWhiteSpace(text[^1]))
                    throw Error($"{at}.content: final assistant content cannot end with trailing whitespace.", at + ".content");
                if (text.Length > 0) prefill = text;
            }
            else if (list.Count > 0 && list[^1].Role == role)
            {
                // Consecutive turns of one role are combined into one, as Anthropic's API does.
                list[^1] = list[^1] with { Content = list[^1].Content + "\n\n" + text };
            }
            else
            {
                list.Add(new ChatMessage(role, text));
            }
            index++;
        }
        if (list.Count == 0) throw Error("messages: the conversation needs a user turn before a final assistant turn.", "messages");
        return (list, prefill);
    }

    private static string ParseContent(JsonElement message, string at, string role)
    {
        var where = at + ".content";
        if (!Present(message, "content", out var content)) throw Missing(where);
        if (content.ValueKind == JsonValueKind.String) return Text(content, where);
        if (content.ValueKind != JsonValueKind.Array) throw WrongType(where, "a string or an array of content blocks");
        if (content.GetArrayLength() > MaxBlocksPerMessage) throw Error($"{where}: at most {MaxBlocksPerMessage} content blocks are allowed.", where);
        var text = new StringBuilder();
        var i = 0;
        foreach (var block in content.EnumerateArray())
        {
            var blockAt = $"{where}.{i}";
            if (block.ValueKind != JsonValueKind.Object) throw WrongType(blockAt, "an object");
            var type = RequiredString(block, "type", 64, blockAt + ".type");
            switch (type)
            {
                case "text":
                    text.Append(RequiredText(block, "text", blockAt + ".text"));
                    break;
                case "thinking" or "redacted_thinking" when role == "assistant":
                    // Earlier reasoning is not shown to the model again (chat templates drop it from history too).
                    break;
                case not "text" when role == "system":
                    throw Error($"{blockAt}.type: system messages take only 'text' blocks.", blockAt + ".type");
                case "image" or "document":
                    throw Error($"{blockAt}.type: '{type}' blocks are not supported; this model takes text only.", blockAt + ".type");
                case "tool_use" or "tool_result":
                    throw Error($"{blockAt}.type: '{type}' blocks are not supported yet.", blockAt + ".type");
                default:
                    throw Error($"{blockAt}.type: unknown content block type '{type}' for a {role} message.", blockAt + ".type");
            }
            i++;
        }
        return text.ToString();
    }

    /// <summary>The system prompt: a string or an array of text blocks; null when absent or empty.</summary>
    private static string? ParseSystem(JsonElement root)
    {
        if (!Present(root, "system", out var system)) return null;
        if (system.ValueKind == JsonValueKind.String)
        {
            var text = Text(system, "system");
            return text.Length == 0 ? null : text;
        }
        if (system.ValueKind != JsonValueKind.Array) throw WrongType("system", "a string or an array of text blocks");
        if (system.GetArrayLength() > MaxBlocksPerMessage) throw Error($"system: at most {MaxBlocksPerMessage} blocks are allowed.", "system");
        var builder = new StringBuilder();
        var i = 0;
        foreach (var block in system.EnumerateArray())
        {
            var at = $"system.{i}";
            if (block.ValueKind != JsonValueKind.Object) throw WrongType(at, "an object");
            var type = RequiredString(block, "type", 64, at + ".type");
            if (type != "text") throw Error($"{at}.type: system blocks must be of type 'text'.", at + ".type");
            builder.Append(RequiredText(block, "text", at + ".text"));
            i++;
        }
        return builder.Length == 0 ? null : builder.ToString();
    }

    private static IReadOnlyList<string> ParseStopSequences(JsonElement root)
    {
        if (!Present(root, "stop_sequences", out var value)) return [];
        if (value.ValueKind != JsonValueKind.Array) throw WrongType("stop_sequences", "an array of strings");
        if (value.GetArrayLength() > MaxStopSequences) throw Error($"stop_sequences: at most {MaxStopSequences} sequences are allowed.", "stop_sequences");
        var stops = new List<string>();
        foreach (var item in value.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String) throw WrongType("stop_sequences", "an array of strings");
            var text = Text(item, "stop_sequences");
            if (text.Length == 0) throw Error("stop_sequences: each sequence must be a non-empty string.", "stop_sequences");
            if (text.Length > MaxStopSequenceLength)
                throw Error($"stop_sequences: each sequence must be at most {MaxStopSequenceLength} characters.", "stop_sequences");
            stops.Add(text);
        }
        return stops;
    }

    /// <summary>metadata.user_id becomes the session's user, as OpenAI's 'user' does; nothing else in it is used.</summary>
    private static string? ParseMetadata(JsonElement root)
    {
        if (!Present(root, "metadata", out var metadata)) return null;
        if (metadata.ValueKind != JsonValueKind.Object) throw WrongType("metadata", "an object");
        if (!Present(metadata, "user_id", out var user)) return null;
        if (user.ValueKind != JsonValueKind.String) throw WrongType("metadata.user_id", "a string");
        var text = Text(user, "metadata.user_id");
        if (text.Length > 256) throw Error("metadata.user_id: must be at most 256 characters.", "metadata.user_id");
        return text;
    }

    /// <summary>Extended thinking is refused when enabled: this gateway does not return thinking blocks.</summary>
    private static void ParseThinking(JsonElement root)
    {
        if (!Present(root, "thinking", out var thinking)) return;
        if (thinking.ValueKind != JsonValueKind.Object) throw WrongType("thinking", "an object");
        var type = RequiredString(thinking, "type", 64, "thinking.type");
        if (type == "disabled") return;
        if (type is "enabled" or "adaptive")
            throw Error($"thinking: extended thinking ('{type}') is not supported by this gateway; omit 'thinking' or send {{\"type\": \"disabled\"}}.", "thinking");
        throw Error("thinking.type: must be 'enabled', 'adaptive' or 'disabled'.", "thinking.type");
    }

    /// <summary>service_tier does not change the answer; only its type and values are checked.</summary>
    private static void ParseServiceTier(JsonElement root)
    {
        if (!Present(root, "service_tier", out var tier)) return;
        if (tier.ValueKind != JsonValueKind.String) throw WrongType("service_tier", "a string");
        if (Text(tier, "service_tier") is not ("auto" or "standard_only")) throw Error("service_tier: must be 'auto' or 'standard_only'.", "service_tier");
    }

    internal static bool Present(JsonElement parent, string name, out JsonElement value) =>
        parent.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null;

    internal static string Text(JsonElement value, string field)
    {
        try
        {
            return value.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw Error($"{field}: the string is not valid Unicode (a lone surrogate escape such as \\ud800?).", field);
        }
    }

    internal static string RequiredString(JsonElement parent, string name, int maxLength, string? field = null)
    {
        field ??= name;
        if (!Present(parent, name, out var value)) throw Missing(field);
        if (value.ValueKind != JsonValueKind.String) throw WrongType(field, "a string");
        var text = Text(value, field);
        if (text.Length == 0) throw Error($"{field}: must be a non-empty string.", field);
        // Echoed in errors: a megabyte of it must not come back in the answer.
        if (text.Length > maxLength) throw Error($"{field}: must be at most {maxLength} characters.", field);
        return text;
    }

    /// <summary>A string that may be empty and long (message text).</summary>
    private static string RequiredText(JsonElement parent, string name, string field)
    {
        if (!Present(parent, name, out var value)) throw Missing(field);
        if (value.ValueKind != JsonValueKind.String) throw WrongType(field, "a string");
        return Text(value, field);
    }

    private static int? OptionalInt(JsonElement root, string name, int min, int max)
    {
        if (!Present(root, name, out var value)) return null;
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out var number)) throw WrongType(name, "an integer");
        if (number < min || number > max) throw Error(max == int.MaxValue ? $"{name}: must be at least {min}." : $"{name}: must be between {min} and {max}.", name);
        return (int)number;
    }

    private static float? OptionalFloat(JsonElement root, string name, float min, float max)
    {
        if (!Present(root, name, out var value)) return null;
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetDouble(out var number) || !double.IsFinite(number)) throw WrongType(name, "a number");
        if (number < min || number > max) throw Error($"{name}: must be between {min} and {max}.", name);
        return (float)number;
    }

    internal static bool? OptionalBool(JsonElement root, string name, string? field = null)
    {
        if (!Present(root, name, out var value)) return null;
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw WrongType(field ?? name, "a boolean"),
        };
    }

    internal static ApiErrorException Error(string message, string? field = null) => new(ApiError.BadRequest(message, field));

    internal static ApiErrorException Missing(string field) => Error($"{field}: Field required.", field);

    internal static ApiErrorException WrongType(string field, string expected) => Error($"{field}: Input should be {expected}.", field);
}
