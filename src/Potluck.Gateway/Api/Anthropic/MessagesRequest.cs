using System.Text;
using System.Text.Json;
using System.Text.Unicode;
using Potluck.Gateway.Chat;
using Potluck.Gateway.Grammar;
using Potluck.Inference.Text;

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
    private static readonly string[] UnsupportedFields = ["container", "mcp_servers", "context_management"];
    private static readonly string[] Efforts = ["low", "medium", "high", "xhigh", "max"];

    /// <param name="countOnly">For /v1/messages/count_tokens: no max_tokens needed, nothing is generated.</param>
    public static MessagesRequest Parse(ReadOnlyMemory<byte> body, bool countOnly = false)
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
            var maxTokens = OptionalInt(root, "max_tokens", 1, int.MaxValue) ?? (countOnly ? 1 : throw Missing("max_tokens"));
            var (messages, prefill) = ParseMessages(root);
            var (tools, toolChoice, parallel) = ParseTools(root);
            if (prefill is not null && toolChoice.Mode is ToolChoiceMode.Required or ToolChoiceMode.Named)
                throw Error("messages: a final assistant turn (prefill) cannot be combined with tool_choice 'any' or 'tool', which force a tool call.", "messages");
            var system = ParseSystem(root);
            // The system prompt is the first chat message (combined with a leading system turn, as consecutive turns are).
            if (system is not null && messages[0].Role == "system") messages[0] = messages[0] with { Content = system + "\n\n" + messages[0].Content };
            else if (system is not null) messages.Insert(0, new ChatMessage("system", system));
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
                Tools = tools,
                ToolChoice = toolChoice,
                ParallelToolCalls = parallel,
                Grammar = ParseOutputFormat(root),
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
        // Tool names by tool_use id, for tool results (some templates print the tool's name with its result).
        var callNames = new Dictionary<string, string>(StringComparer.Ordinal);
        string? prefill = null;
        var index = 0;
        foreach (var message in messages.EnumerateArray())
        {
            var at = $"messages.{index}";
            if (message.ValueKind != JsonValueKind.Object) throw WrongType(at, "an object");
            var role = RequiredString(message, "role", 32, at + ".role");
            if (role is not ("user" or "assistant" or "system")) throw Error($"{at}.role: must be 'user', 'assistant' or 'system'.", at + ".role");
            var turn = ParseContent(message, at, role, callNames);
            if (role == "assistant" && index == count - 1 && turn.Calls.Count == 0)
            {
                // A final assistant turn of text is a prefill: the model's answer continues it.
                if (turn.Text.Length > 0 && char.IsWhiteSpace(turn.Text[^1]))
                    throw Error($"{at}.content: final assistant content cannot end with trailing whitespace.", at + ".content");
                if (turn.Text.Length > 0) prefill = turn.Text;
                index++;
                continue;
            }
            foreach (var result in turn.Results) list.Add(result);
            if (role == "assistant") Add(list, new ChatMessage("assistant", turn.Text) { ToolCalls = turn.Calls });
            // A user turn of only tool results has no user message of its own.
            else if (turn.Results.Count == 0 || turn.Text.Length > 0) Add(list, new ChatMessage(role, turn.Text));
            index++;
        }
        if (!list.Exists(m => m.Role is "user" or "tool"))
            throw Error("messages: the conversation needs a user turn before a final assistant turn.", "messages");
        return (list, prefill);
    }

    /// <summary>Consecutive plain turns of one role are combined into one, as Anthropic's API does.</summary>
    private static void Add(List<ChatMessage> list, ChatMessage message)
    {
        if (list.Count > 0 && list[^1] is { ToolCalls.Count: 0, ToolCallId: null } last && last.Role == message.Role && message.ToolCalls.Count == 0)
            list[^1] = last with { Content = last.Content + "\n\n" + message.Content };
        else
            list.Add(message);
    }

    private sealed record Turn(string Text, IReadOnlyList<ToolCall> Calls, IReadOnlyList<ChatMessage> Results);

    private static Turn ParseContent(JsonElement message, string at, string role, Dictionary<string, string> callNames)
    {
        var where = at + ".content";
        if (!Present(message, "content", out var content)) throw Missing(where);
        if (content.ValueKind == JsonValueKind.String) return new Turn(Text(content, where), [], []);
        if (content.ValueKind != JsonValueKind.Array) throw WrongType(where, "a string or an array of content blocks");
        if (content.GetArrayLength() > MaxBlocksPerMessage) throw Error($"{where}: at most {MaxBlocksPerMessage} content blocks are allowed.", where);
        var text = new StringBuilder();
        var calls = new List<ToolCall>();
        var results = new List<ChatMessage>();
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
                case not "text" when role == "system":
                    throw Error($"{blockAt}.type: system messages take only 'text' blocks.", blockAt + ".type");
                case "thinking" or "redacted_thinking" when role == "assistant":
                    // Earlier reasoning is not shown to the model again (chat templates drop it from history too).
                    break;
                case "tool_use" when role == "assistant":
                    if (calls.Count >= CompletionRequestParser.MaxToolCallsPerMessage)
                        throw Error($"{where}: at most {CompletionRequestParser.MaxToolCallsPerMessage} tool_use blocks are allowed.", where);
                    var call = ParseToolUse(block, blockAt);
                    callNames[call.Id] = call.Name;
                    calls.Add(call);
                    break;
                case "tool_result" when role == "user":
                    if (text.Length > 0) throw Error($"{blockAt}: tool_result blocks must come before any text in a user turn.", blockAt);
                    results.Add(ParseToolResult(block, blockAt, callNames));
                    break;
                case "tool_use" or "tool_result":
                    throw Error($"{blockAt}.type: '{type}' blocks belong in {(type == "tool_use" ? "assistant" : "user")} messages.", blockAt + ".type");
                case "image" or "document":
                    throw Error($"{blockAt}.type: '{type}' blocks are not supported; this model takes text only.", blockAt + ".type");
                default:
                    throw Error($"{blockAt}.type: unknown content block type '{type}' for a {role} message.", blockAt + ".type");
            }
            i++;
        }
        return new Turn(text.ToString(), calls.Count == 0 ? Array.Empty<ToolCall>() : calls, results);
    }

    private static ToolCall ParseToolUse(JsonElement block, string at)
    {
        var id = RequiredString(block, "id", CompletionRequestParser.MaxNameLength, at + ".id");
        var name = ToolName(block, at + ".name");
        if (!Present(block, "input", out var input)) throw Missing(at + ".input");
        if (input.ValueKind != JsonValueKind.Object) throw WrongType(at + ".input", "an object");
        return new ToolCall(id, name, input.GetRawText());
    }

    /// <summary>A tool_result becomes a tool message answering its call; an error result says so in its text.</summary>
    private static ChatMessage ParseToolResult(JsonElement block, string at, Dictionary<string, string> callNames)
    {
        var id = RequiredString(block, "tool_use_id", CompletionRequestParser.MaxNameLength, at + ".tool_use_id");
        if (!callNames.TryGetValue(id, out var name))
            throw Error($"{at}.tool_use_id: no earlier tool_use block has the id '{id}'.", at + ".tool_use_id");
        var text = "";
        if (Present(block, "content", out var content))
        {
            if (content.ValueKind == JsonValueKind.String) text = Text(content, at + ".content");
            else if (content.ValueKind == JsonValueKind.Array)
            {
                var builder = new StringBuilder();
                var i = 0;
                foreach (var part in content.EnumerateArray())
                {
                    var partAt = $"{at}.content.{i++}";
                    if (part.ValueKind != JsonValueKind.Object) throw WrongType(partAt, "an object");
                    var type = RequiredString(part, "type", 64, partAt + ".type");
                    if (type != "text") throw Error($"{partAt}.type: tool results take only 'text' blocks here; '{type}' is not supported.", partAt + ".type");
                    builder.Append(RequiredText(part, "text", partAt + ".text"));
                }
                text = builder.ToString();
            }
            else throw WrongType(at + ".content", "a string or an array of text blocks");
        }
        if (OptionalBool(block, "is_error", at + ".is_error") == true) text = "Error: " + text;
        return new ChatMessage("tool", text) { ToolCallId = id, Name = name };
    }

    /// <summary>Anthropic's rule for tool names: 1 to 64 of a-z, A-Z, 0-9, '_' and '-'.</summary>
    private static string ToolName(JsonElement owner, string field)
    {
        if (!Present(owner, "name", out var value)) throw Missing(field);
        if (value.ValueKind != JsonValueKind.String) throw WrongType(field, "a string");
        var name = Text(value, field);
        if (name.Length is 0 or > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-'))
            throw Error($"{field}: must be 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'.", field);
        return name;
    }

    private static (IReadOnlyList<ToolDefinition> Tools, ToolChoice Choice, bool Parallel) ParseTools(JsonElement root)
    {
        var tools = new List<ToolDefinition>();
        if (Present(root, "tools", out var toolsElement))
        {
            if (toolsElement.ValueKind != JsonValueKind.Array) throw WrongType("tools", "an array");
            if (toolsElement.GetArrayLength() > CompletionRequestParser.MaxTools)
                throw Error($"tools: at most {CompletionRequestParser.MaxTools} tools are allowed.", "tools");
            var i = 0;
            foreach (var tool in toolsElement.EnumerateArray()) tools.Add(ParseTool(tool, $"tools.{i++}"));
        }
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var tool in tools)
            if (!names.Add(tool.Name)) throw Error($"tools: two tools are named '{tool.Name}'; tool names must be unique.", "tools");

        if (!Present(root, "tool_choice", out var choice)) return (tools, tools.Count == 0 ? ToolChoice.None : ToolChoice.Auto, true);
        if (choice.ValueKind != JsonValueKind.Object) throw WrongType("tool_choice", "an object");
        var type = RequiredString(choice, "type", 64, "tool_choice.type");
        var parallel = OptionalBool(choice, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use") != true;
        ToolChoice result = type switch
        {
            "auto" => ToolChoice.Auto,
            "none" => ToolChoice.None,
            "any" => new ToolChoice(ToolChoiceMode.Required),
            "tool" => new ToolChoice(ToolChoiceMode.Named, ToolName(choice, "tool_choice.name")),
            _ => throw Error("tool_choice.type: must be 'auto', 'any', 'tool' or 'none'.", "tool_choice.type"),
        };
        if (result.Mode is ToolChoiceMode.Required or ToolChoiceMode.Named && tools.Count == 0)
            throw Error($"tool_choice: '{type}' asks for a tool call, but no tools were given.", "tool_choice");
        if (result.Name is { } named && !names.Contains(named))
            throw Error($"tool_choice.name: the tool '{named}' is not among the tools given.", "tool_choice.name");
        return (tools, result, parallel);
    }

    /// <summary>A client tool: name, description, input_schema. It is shown to the template as the OpenAI tool the same function would be.</summary>
    private static ToolDefinition ParseTool(JsonElement tool, string at)
    {
        if (tool.ValueKind != JsonValueKind.Object) throw WrongType(at, "an object");
        if (Present(tool, "type", out var typeElement))
        {
            if (typeElement.ValueKind != JsonValueKind.String) throw WrongType(at + ".type", "a string");
            var type = Text(typeElement, at + ".type");
            if (type != "custom")
                throw Error($"{at}.type: '{(type.Length <= 64 ? type : type[..64] + "...")}' tools run on Anthropic's servers; this gateway supports only client tools ('custom').", at + ".type");
        }
        var name = ToolName(tool, at + ".name");
        string? description = null;
        if (Present(tool, "description", out var d))
        {
            if (d.ValueKind != JsonValueKind.String) throw WrongType(at + ".description", "a string");
            description = Text(d, at + ".description");
        }
        if (!Present(tool, "input_schema", out var schema)) throw Missing(at + ".input_schema");
        if (schema.ValueKind != JsonValueKind.Object) throw WrongType(at + ".input_schema", "a JSON Schema object");
        var parameters = schema.GetRawText();
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("type", "function");
            json.WriteStartObject("function");
            json.WriteString("name", name);
            if (description is not null) json.WriteString("description", description);
            json.WritePropertyName("parameters");
            schema.WriteTo(json);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        var toolJson = Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
        if (toolJson.Length > CompletionRequestParser.MaxToolJsonCharacters)
            throw Error($"{at}: at most {CompletionRequestParser.MaxToolJsonCharacters} characters of JSON per tool.", at);
        return new ToolDefinition(name, description, parameters, toolJson);
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

    /// <summary>
    /// Structured output: output_config.format (or the older top-level output_format) {"type": "json_schema", "schema"}
    /// constrains sampling with the schema's grammar, as response_format does for chat completions. output_config.effort
    /// is checked and not used: it tunes Claude's reasoning, which this gateway does not budget.
    /// </summary>
    private static GrammarSpec? ParseOutputFormat(JsonElement root)
    {
        JsonElement format = default;
        var at = "output_format";
        var hasFormat = Present(root, "output_format", out format);
        if (Present(root, "output_config", out var config))
        {
            if (config.ValueKind != JsonValueKind.Object) throw WrongType("output_config", "an object");
            if (Present(config, "effort", out var effort)
                && (effort.ValueKind != JsonValueKind.String || !Efforts.Contains(Text(effort, "output_config.effort"))))
                throw Error($"output_config.effort: must be one of {string.Join(", ", Efforts.Select(e => $"'{e}'"))}.", "output_config.effort");
            if (Present(config, "format", out var inner))
            {
                if (hasFormat) throw Error("output_format: send either output_format or output_config.format, not both.", "output_format");
                (format, at, hasFormat) = (inner, "output_config.format", true);
            }
        }
        if (!hasFormat) return null;
        if (format.ValueKind != JsonValueKind.Object) throw WrongType(at, "an object");
        var type = RequiredString(format, "type", 64, at + ".type");
        if (type != "json_schema") throw Error($"{at}.type: must be 'json_schema'.", at + ".type");
        if (!Present(format, "schema", out var schema)) throw Missing(at + ".schema");
        if (schema.ValueKind != JsonValueKind.Object) throw WrongType(at + ".schema", "a JSON Schema object");
        try
        {
            return new GrammarSpec(JsonSchemaGrammar.ToRootGbnf(schema));
        }
        catch (JsonSchemaGrammarException e)
        {
            throw Error($"{at}.schema: {e.Message}.", at + ".schema");
        }
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
