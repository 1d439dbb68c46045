using System.Text.Json;
using Potluck.Gateway.Chat;

namespace Potluck.Gateway.Api;

/// <summary>tools, tool_choice, parallel_tool_calls, legacy functions/function_call, and the tool fields of messages.</summary>
public static partial class CompletionRequestParser
{
    public const int MaxTools = 128;
    public const int MaxToolCallsPerMessage = 64;
    /// <summary>Characters of one tool's JSON (its schema included): tools are prompt text, and schemas become grammars.</summary>
    public const int MaxToolJsonCharacters = 64 * 1024;

    private static CompletionRequest ParseTools(JsonElement root, CompletionRequest request)
    {
        var tools = new List<ToolDefinition>();
        var hasTools = root.TryGetProperty("tools", out var toolsElement) && toolsElement.ValueKind != JsonValueKind.Null;
        var hasFunctions = root.TryGetProperty("functions", out var functionsElement) && functionsElement.ValueKind != JsonValueKind.Null;
        if (hasTools && hasFunctions) throw Error(ApiError.BadRequest("Send either 'tools' or the legacy 'functions', not both.", "functions"));
        if (hasTools)
        {
            if (toolsElement.ValueKind != JsonValueKind.Array) throw Error(ApiError.WrongType("tools", "an array"));
            if (toolsElement.GetArrayLength() > MaxTools) throw Error(ApiError.OutOfRange("tools", $"at most {MaxTools} tools"));
            var i = 0;
            foreach (var tool in toolsElement.EnumerateArray())
            {
                var at = $"tools[{i++}]";
                if (tool.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType(at, "an object"));
                if (!tool.TryGetProperty("type", out var type) || type.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing($"{at}.type"));
                if (type.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType($"{at}.type", "a string"));
                if (Text(type, $"{at}.type") != "function")
                    throw Error(ApiError.BadRequest($"Tool type '{Clip(type.GetString()!)}' is not supported; only 'function' tools are.", $"{at}.type", "unsupported_value"));
                if (!tool.TryGetProperty("function", out var function) || function.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing($"{at}.function"));
                tools.Add(ParseFunction(function, $"{at}.function", tool));
            }
        }
        else if (hasFunctions)
        {
            if (functionsElement.ValueKind != JsonValueKind.Array) throw Error(ApiError.WrongType("functions", "an array"));
            if (functionsElement.GetArrayLength() > MaxTools) throw Error(ApiError.OutOfRange("functions", $"at most {MaxTools} functions"));
            var i = 0;
            foreach (var function in functionsElement.EnumerateArray()) tools.Add(ParseFunction(function, $"functions[{i++}]", null));
        }
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var tool in tools)
            if (!names.Add(tool.Name))
                throw Error(ApiError.BadRequest($"Two tools are named '{tool.Name}'; tool names must be unique.", hasTools ? "tools" : "functions", "invalid_value"));

        var choice = ParseToolChoice(root, names, hasFunctions);
        if (choice.Mode is ToolChoiceMode.Required or ToolChoiceMode.Named && tools.Count == 0)
            throw Error(ApiError.BadRequest("'tool_choice' asks for a tool call, but no tools were given.", "tool_choice"));
        var parallel = OptionalBool(root, "parallel_tool_calls") ?? true;
        return request with { Tools = tools, ToolChoice = choice, ParallelToolCalls = parallel };
    }

    private static ToolDefinition ParseFunction(JsonElement function, string at, JsonElement? tool)
    {
        if (function.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType(at, "an object"));
        var name = ToolName(function, $"{at}.name");
        string? description = null;
        if (function.TryGetProperty("description", out var d) && d.ValueKind != JsonValueKind.Null)
        {
            if (d.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType($"{at}.description", "a string"));
            description = Text(d, $"{at}.description");
        }
        var parameters = "{}";
        if (function.TryGetProperty("parameters", out var p) && p.ValueKind != JsonValueKind.Null)
        {
            if (p.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType($"{at}.parameters", "a JSON Schema object"));
            parameters = p.GetRawText();
        }
        if (function.TryGetProperty("strict", out var strict) && strict.ValueKind is not (JsonValueKind.Null or JsonValueKind.True or JsonValueKind.False))
            throw Error(ApiError.WrongType($"{at}.strict", "a boolean"));
        // Templates print the tool as {"type": "function", "function": {...}}; legacy functions get that wrapper.
        var toolJson = tool is { } t ? t.GetRawText() : "{\"type\": \"function\", \"function\": " + function.GetRawText() + "}";
        if (toolJson.Length > MaxToolJsonCharacters) throw Error(ApiError.OutOfRange(at, $"at most {MaxToolJsonCharacters} characters of JSON per tool"));
        return new ToolDefinition(name, description, parameters, toolJson);
    }

    /// <summary>OpenAI's rule for function names: 1-64 of a-z, A-Z, 0-9, '_' and '-'.</summary>
    private static string ToolName(JsonElement owner, string param)
    {
        if (!owner.TryGetProperty("name", out var n) || n.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing(param));
        if (n.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType(param, "a string"));
        var name = Text(n, param);
        if (name.Length is 0 or > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.'))
            throw Error(ApiError.OutOfRange(param, "1 to 64 characters of a-z, A-Z, 0-9, '_', '-' and '.'"));
        return name;
    }

    private static string Clip(string text) => text.Length <= 64 ? text : text[..64] + "...";

    private static ToolChoice ParseToolChoice(JsonElement root, HashSet<string> names, bool legacy)
    {
        var param = legacy ? "function_call" : "tool_choice";
        if (root.TryGetProperty(legacy ? "tool_choice" : "function_call", out var other) && other.ValueKind != JsonValueKind.Null)
            throw Error(ApiError.BadRequest(legacy ? "'tool_choice' goes with 'tools'; with 'functions' use 'function_call'." : "'function_call' goes with the legacy 'functions'; with 'tools' use 'tool_choice'.",
                legacy ? "tool_choice" : "function_call"));
        if (!root.TryGetProperty(param, out var choice) || choice.ValueKind == JsonValueKind.Null) return names.Count == 0 ? ToolChoice.None : ToolChoice.Auto;
        if (choice.ValueKind == JsonValueKind.String)
        {
            var mode = Text(choice, param);
            return mode switch
            {
                "auto" => ToolChoice.Auto,
                "none" => ToolChoice.None,
                "required" when !legacy => new ToolChoice(ToolChoiceMode.Required),
                _ => throw Error(ApiError.OutOfRange(param, legacy ? "'auto', 'none' or {\"name\": ...}" : "'auto', 'none', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}")),
            };
        }
        if (choice.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType(param, "a string or an object"));
        string name;
        if (legacy) name = ToolName(choice, $"{param}.name");
        else
        {
            if (!choice.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || Text(type, $"{param}.type") != "function")
                throw Error(ApiError.BadRequest("'tool_choice' objects must have \"type\": \"function\".", $"{param}.type", "invalid_value"));
            if (!choice.TryGetProperty("function", out var function) || function.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing($"{param}.function"));
            if (function.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType($"{param}.function", "an object"));
            name = ToolName(function, $"{param}.function.name");
        }
        if (!names.Contains(name))
            throw Error(ApiError.BadRequest($"'{param}' names the tool '{name}', which is not among the tools given.", legacy ? $"{param}.name" : $"{param}.function.name", "unknown_tool"));
        return new ToolChoice(ToolChoiceMode.Named, name);
    }

    /// <summary>A message's tool_calls (assistant), tool_call_id (tool), name, legacy function_call and "function" role.</summary>
    private static ChatMessage ParseMessageTools(JsonElement message, string at, ChatMessage parsed)
    {
        string? name = null;
        if (message.TryGetProperty("name", out var n) && n.ValueKind != JsonValueKind.Null)
        {
            if (n.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType($"{at}.name", "a string"));
            name = Text(n, $"{at}.name");
            if (name.Length > MaxNameLength) throw Error(ApiError.OutOfRange($"{at}.name", $"at most {MaxNameLength} characters"));
        }
        parsed = parsed with { Name = name };
        if (parsed.Role == "function")
        {
            // Legacy function results: the call they answer is known only by the function's name.
            if (name is null) throw Error(ApiError.Missing($"{at}.name"));
            return parsed with { Role = "tool", ToolCallId = name };
        }
        var hasCalls = message.TryGetProperty("tool_calls", out var calls) && calls.ValueKind != JsonValueKind.Null;
        var hasLegacyCall = message.TryGetProperty("function_call", out var legacyCall) && legacyCall.ValueKind != JsonValueKind.Null;
        if ((hasCalls || hasLegacyCall) && parsed.Role != "assistant")
            throw Error(ApiError.BadRequest("Only assistant messages can carry tool calls.", $"{at}.{(hasCalls ? "tool_calls" : "function_call")}"));
        if (hasCalls)
        {
            if (calls.ValueKind != JsonValueKind.Array) throw Error(ApiError.WrongType($"{at}.tool_calls", "an array"));
            if (calls.GetArrayLength() > MaxToolCallsPerMessage) throw Error(ApiError.OutOfRange($"{at}.tool_calls", $"at most {MaxToolCallsPerMessage} calls"));
            var list = new List<ToolCall>();
            var i = 0;
            foreach (var call in calls.EnumerateArray())
            {
                var callAt = $"{at}.tool_calls[{i++}]";
                if (call.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType(callAt, "an object"));
                if (call.TryGetProperty("type", out var type) && type.ValueKind != JsonValueKind.Null
                    && (type.ValueKind != JsonValueKind.String || Text(type, $"{callAt}.type") != "function"))
                    throw Error(ApiError.OutOfRange($"{callAt}.type", "'function'"));
                if (!call.TryGetProperty("id", out var id) || id.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing($"{callAt}.id"));
                if (id.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType($"{callAt}.id", "a string"));
                var idText = Text(id, $"{callAt}.id");
                if (idText.Length is 0 or > MaxNameLength) throw Error(ApiError.OutOfRange($"{callAt}.id", $"1 to {MaxNameLength} characters"));
                if (!call.TryGetProperty("function", out var function) || function.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing($"{callAt}.function"));
                if (function.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType($"{callAt}.function", "an object"));
                list.Add(new ToolCall(idText, ToolName(function, $"{callAt}.function.name"), Arguments(function, $"{callAt}.function.arguments")));
            }
            return parsed with { ToolCalls = list };
        }
        if (hasLegacyCall)
        {
            if (legacyCall.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType($"{at}.function_call", "an object"));
            var callName = ToolName(legacyCall, $"{at}.function_call.name");
            return parsed with { ToolCalls = [new ToolCall(callName, callName, Arguments(legacyCall, $"{at}.function_call.arguments"))] };
        }
        if (parsed.Role == "tool")
        {
            if (!message.TryGetProperty("tool_call_id", out var callId) || callId.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing($"{at}.tool_call_id"));
            if (callId.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType($"{at}.tool_call_id", "a string"));
            var idText = Text(callId, $"{at}.tool_call_id");
            if (idText.Length > MaxNameLength) throw Error(ApiError.OutOfRange($"{at}.tool_call_id", $"at most {MaxNameLength} characters"));
            return parsed with { ToolCallId = idText };
        }
        if (parsed.Role == "assistant" && message.TryGetProperty("reasoning_content", out var reasoning) && reasoning.ValueKind != JsonValueKind.Null)
        {
            if (reasoning.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType($"{at}.reasoning_content", "a string"));
            return parsed with { ReasoningContent = Text(reasoning, $"{at}.reasoning_content") };
        }
        return parsed;
    }

    /// <summary>Call arguments: OpenAI sends a JSON text of an object; an object itself is accepted too.</summary>
    private static string Arguments(JsonElement function, string param)
    {
        if (!function.TryGetProperty("arguments", out var arguments) || arguments.ValueKind == JsonValueKind.Null) return "{}";
        if (arguments.ValueKind == JsonValueKind.Object) return arguments.GetRawText();
        if (arguments.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType(param, "a string of JSON"));
        var text = Text(arguments, param);
        try
        {
            using var document = JsonDocument.Parse(text, new JsonDocumentOptions { MaxDepth = 32 });
            if (document.RootElement.ValueKind != JsonValueKind.Object) throw Error(ApiError.OutOfRange(param, "a JSON object"));
        }
        catch (JsonException)
        {
            throw Error(ApiError.BadRequest($"Invalid value for '{param}': not valid JSON.", param, "invalid_value"));
        }
        return text;
    }
}
