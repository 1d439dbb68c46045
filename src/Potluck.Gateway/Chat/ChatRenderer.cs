using System.Globalization;
using System.Text;
using System.Text.Json;
using Potluck.Gateway.Api;

namespace Potluck.Gateway.Chat;

/// <summary>A rendering error the client caused (a template rule such as Mistral's 9-character call ids); a 400.</summary>
public sealed class ChatRenderException(string message, string param) : Exception(message)
{
    public string Param { get; } = param;
}

/// <summary>
/// A prompt as parts: markup written by the renderer (tokenized with special tokens) and client text (tokenized
/// without, so a user or a tool result cannot forge a turn). Generic templates instead get plain messages for the
/// model's own template (<see cref="PlainMessages"/>).
/// </summary>
public sealed class RenderedChat
{
    private readonly List<(string Text, bool IsContent)> _parts = [];

    public IReadOnlyList<(string Text, bool IsContent)> Parts => _parts;

    /// <summary>Set for <see cref="ChatFamily.Generic"/>: role/content pairs for llama_chat_apply_template.</summary>
    public IReadOnlyList<(string Role, string Content)>? PlainMessages { get; init; }

    public string Text => PlainMessages is null ? string.Concat(_parts.Select(p => p.Text)) : throw new InvalidOperationException("a plain-message prompt has no rendered text");

    internal RenderedChat Markup(string text)
    {
        if (text.Length == 0) return this;
        if (_parts.Count > 0 && !_parts[^1].IsContent) _parts[^1] = (_parts[^1].Text + text, false);
        else _parts.Add((text, false));
        return this;
    }

    internal RenderedChat Content(string text)
    {
        if (text.Length == 0) return this;
        if (_parts.Count > 0 && _parts[^1].IsContent) _parts[^1] = (_parts[^1].Text + text, true);
        else _parts.Add((text, true));
        return this;
    }
}

/// <summary>Settings of one rendering: the generation prompt, the texts of BOS/EOS when a template writes them, the date.</summary>
public sealed record ChatRenderOptions
{
    public bool AddGenerationPrompt { get; init; } = true;
    /// <summary>BOS text the template writes first; null when the tokenizer adds BOS itself (the gateway's case).</summary>
    public string? BosText { get; init; }
    /// <summary>EOS text after assistant turns (Mistral writes it); "&lt;/s&gt;" when not known.</summary>
    public string EosText { get; init; } = "</s>";
    /// <summary>The date the Llama 3 and gpt-oss system headers show (llama.cpp passes today's).</summary>
    public DateTimeOffset Now { get; init; } = DateTimeOffset.UtcNow;
}

/// <summary>
/// Renders a conversation with tools the way each family's published chat template does (facts from the
/// templates llama.cpp ships under models/templates; see ChatRendererTests for the expected texts).
/// </summary>
public static class ChatRenderer
{
    /// <summary>Whether a request needs this renderer rather than the model's plain template.</summary>
    public static bool Needed(IReadOnlyList<ChatMessage> messages, IReadOnlyList<ToolDefinition> tools) =>
        tools.Count > 0 || messages.Any(m => m.Role == "tool" || m.ToolCalls.Count > 0);

    public static RenderedChat Render(ChatTemplateTraits traits, IReadOnlyList<ChatMessage> messages, IReadOnlyList<ToolDefinition> tools, ChatRenderOptions options) =>
        traits.Family switch
        {
            ChatFamily.Hermes => Hermes(traits, messages, tools, options),
            ChatFamily.Llama3 => Llama3(messages, tools, options),
            ChatFamily.Mistral => Mistral(messages, tools, options),
            ChatFamily.GptOss => GptOss(messages, tools, options),
            ChatFamily.DeepSeek => DeepSeek(traits, messages, tools, options),
            _ => Generic(messages, tools),
        };

    private static string ToolJson(ToolDefinition tool, int? indent = null) => PythonJson.Rewrite(tool.ToolJson, indent);

    // ---- Hermes / Qwen (Qwen3 and Qwen2.5 templates; Hermes 2 Pro/3 use the same call syntax) ----
    private static RenderedChat Hermes(ChatTemplateTraits traits, IReadOnlyList<ChatMessage> messages, IReadOnlyList<ToolDefinition> tools, ChatRenderOptions options)
    {
        var r = new RenderedChat();
        if (options.BosText is { } bos) r.Markup(bos);
        var first = 0;
        if (tools.Count > 0)
        {
            r.Markup("<|im_start|>system\n");
            if (messages.Count > 0 && messages[0].Role == "system")
            {
                r.Content(messages[0].Content).Markup("\n\n");
                first = 1;
            }
            else if (traits.QwenDefaultSystem) r.Markup("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n");
            r.Markup("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>");
            foreach (var tool in tools) r.Markup("\n").Content(ToolJson(tool));
            r.Markup("\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n");
        }
        else if (messages.Count > 0 && messages[0].Role == "system")
        {
            r.Markup("<|im_start|>system\n").Content(messages[0].Content).Markup("<|im_end|>\n");
            first = 1;
        }
        else if (traits.QwenDefaultSystem) r.Markup("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n");

        // Qwen3 shows reasoning only for assistant turns after the last real user query.
        var lastQuery = messages.Count - 1;
        for (var i = messages.Count - 1; i >= 0; i--)
        {
            if (messages[i].Role != "user") continue;
            var c = messages[i].Content;
            if (c.StartsWith("<tool_response>", StringComparison.Ordinal) && c.EndsWith("</tool_response>", StringComparison.Ordinal)) continue;
            lastQuery = i;
            break;
        }
        for (var i = first; i < messages.Count; i++)
        {
            var m = messages[i];
            switch (m.Role)
            {
                case "user" or "system":
                    r.Markup($"<|im_start|>{m.Role}\n").Content(m.Content).Markup("<|im_end|>\n");
                    break;
                case "assistant":
                {
                    var content = m.Content;
                    var reasoning = m.ReasoningContent ?? "";
                    if (m.ReasoningContent is null && content.Contains("</think>", StringComparison.Ordinal))
                    {
                        var end = content.LastIndexOf("</think>", StringComparison.Ordinal);
                        var before = content[..content.IndexOf("</think>", StringComparison.Ordinal)].TrimEnd('\n');
                        var open = before.LastIndexOf("<think>", StringComparison.Ordinal);
                        reasoning = (open >= 0 ? before[(open + 7)..] : before).TrimStart('\n');
                        content = content[(end + 8)..].TrimStart('\n');
                    }
                    r.Markup("<|im_start|>assistant\n");
                    if (traits.Thinking && i > lastQuery && (i == messages.Count - 1 || reasoning.Length > 0))
                    {
                        r.Markup("<think>\n").Content(reasoning.Trim('\n')).Markup("\n</think>\n\n");
                        content = content.TrimStart('\n');
                    }
                    r.Content(content);
                    for (var k = 0; k < m.ToolCalls.Count; k++)
                    {
                        if (k > 0 || content.Length > 0) r.Markup("\n");
                        var call = m.ToolCalls[k];
                        r.Markup("<tool_call>\n{\"name\": \"").Content(call.Name).Markup("\", \"arguments\": ").Content(call.ArgumentsJson).Markup("}\n</tool_call>");
                    }
                    r.Markup("<|im_end|>\n");
                    break;
                }
                case "tool":
                    if (i == 0 || messages[i - 1].Role != "tool") r.Markup("<|im_start|>user");
                    r.Markup("\n<tool_response>\n").Content(m.Content).Markup("\n</tool_response>");
                    if (i == messages.Count - 1 || messages[i + 1].Role != "tool") r.Markup("<|im_end|>\n");
                    break;
            }
        }
        if (options.AddGenerationPrompt) r.Markup("<|im_start|>assistant\n");
        return r;
    }

    // ---- Llama 3.x (tools in the first user message, calls as {"name", "parameters"}, results as ipython) ----
    private static RenderedChat Llama3(IReadOnlyList<ChatMessage> messages, IReadOnlyList<ToolDefinition> tools, ChatRenderOptions options)
    {
        var r = new RenderedChat();
        if (options.BosText is { } bos) r.Markup(bos);
        var rest = messages.ToList();
        var system = "";
        if (rest.Count > 0 && rest[0].Role == "system")
        {
            system = rest[0].Content.Trim();
            rest.RemoveAt(0);
        }
        var date = options.Now.ToString("dd MMM yyyy", CultureInfo.InvariantCulture);
        r.Markup("<|start_header_id|>system<|end_header_id|>\n\n");
        if (tools.Count > 0) r.Markup("Environment: ipython\n");
        r.Markup($"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n").Content(system).Markup("<|eot_id|>");
        if (tools.Count > 0)
        {
            if (rest.Count == 0) throw new ChatRenderException("This model's template puts the tools into the first user message, and there is none.", "messages");
            var firstUser = rest[0].Content.Trim();
            rest.RemoveAt(0);
            r.Markup("<|start_header_id|>user<|end_header_id|>\n\n");
            r.Markup("Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n");
            r.Markup("Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n");
            foreach (var tool in tools) r.Content(ToolJson(tool, indent: 4)).Markup("\n\n");
            r.Content(firstUser).Markup("<|eot_id|>");
        }
        for (var i = 0; i < rest.Count; i++)
        {
            var m = rest[i];
            if (m.Role == "tool")
            {
                // The template writes content|tojson when it is "iterable", which a string is in Jinja.
                r.Markup("<|start_header_id|>ipython<|end_header_id|>\n\n").Content(PythonJson.String(m.Content)).Markup("<|eot_id|>");
            }
            else if (m.ToolCalls.Count > 0)
            {
                if (m.ToolCalls.Count != 1) throw new ChatRenderException("This model's template supports exactly one tool call per assistant message.", "messages");
                var call = m.ToolCalls[0];
                r.Markup("<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"").Content(call.Name).Markup("\", \"parameters\": ")
                    .Content(PythonJson.Rewrite(call.ArgumentsJson)).Markup("}<|eot_id|>");
            }
            else
            {
                r.Markup($"<|start_header_id|>{m.Role}<|end_header_id|>\n\n").Content(m.Content.Trim()).Markup("<|eot_id|>");
            }
        }
        if (options.AddGenerationPrompt) r.Markup("<|start_header_id|>assistant<|end_header_id|>\n\n");
        return r;
    }

    // ---- Mistral (Nemo-style template: tools before the last user message, 9-character call ids) ----
    private static RenderedChat Mistral(IReadOnlyList<ChatMessage> messages, IReadOnlyList<ToolDefinition> tools, ChatRenderOptions options)
    {
        var loop = messages.ToList();
        string? system = null;
        if (loop.Count > 0 && loop[0].Role == "system")
        {
            system = loop[0].Content;
            loop.RemoveAt(0);
        }
        var alternation = 0;
        foreach (var m in loop)
        {
            if (m.Role == "tool" || m.ToolCalls.Count > 0) continue;
            if ((m.Role == "user") != (alternation % 2 == 0))
                throw new ChatRenderException("This model's template needs roles to alternate user/assistant after the optional system message.", "messages");
            alternation++;
        }
        var lastUser = loop.FindLastIndex(m => m.Role == "user");
        var r = new RenderedChat();
        if (options.BosText is { } bos) r.Markup(bos);
        for (var i = 0; i < loop.Count; i++)
        {
            var m = loop[i];
            if (m.Role == "user")
            {
                if (tools.Count > 0 && i == lastUser)
                {
                    r.Markup("[AVAILABLE_TOOLS][");
                    for (var t = 0; t < tools.Count; t++)
                    {
                        r.Markup("{\"type\": \"function\", \"function\": {");
                        using var function = JsonDocument.Parse(tools[t].ToolJson);
                        var first = true;
                        foreach (var property in function.RootElement.GetProperty("function").EnumerateObject())
                        {
                            if (property.Name == "return") continue;
                            if (!first) r.Markup(", ");
                            // The template writes string values between quotes without escaping them.
                            r.Markup("\"").Content(property.Name).Markup("\": ");
                            if (property.Value.ValueKind == JsonValueKind.String) r.Markup("\"").Content(property.Value.GetString()!).Markup("\"");
                            else r.Content(PythonJson.Write(property.Value));
                            first = false;
                        }
                        r.Markup("}}").Markup(t < tools.Count - 1 ? ", " : "]");
                    }
                    r.Markup("[/AVAILABLE_TOOLS]");
                }
                r.Markup("[INST]");
                if (i == loop.Count - 1 && system is not null) r.Content(system).Markup("\n\n");
                r.Content(m.Content).Markup("[/INST]");
            }
            else if (m.ToolCalls.Count > 0)
            {
                r.Markup("[TOOL_CALLS][");
                for (var k = 0; k < m.ToolCalls.Count; k++)
                {
                    var call = m.ToolCalls[k];
                    if (call.Id.Length != 9 || !call.Id.All(char.IsAsciiLetterOrDigit))
                        throw new ChatRenderException("This model's template needs tool call ids of 9 letters or digits.", "messages");
                    r.Markup("{\"name\": ").Content(PythonJson.String(call.Name)).Markup(", \"arguments\": ").Content(PythonJson.Rewrite(call.ArgumentsJson))
                        .Markup(", \"id\": \"").Content(call.Id).Markup("\"}").Markup(k < m.ToolCalls.Count - 1 ? ", " : "]" + options.EosText);
                }
            }
            else if (m.Role == "assistant")
            {
                r.Content(m.Content).Markup(options.EosText);
            }
            else if (m.Role == "tool")
            {
                var id = m.ToolCallId ?? "";
                if (id.Length != 9 || !id.All(char.IsAsciiLetterOrDigit))
                    throw new ChatRenderException("This model's template needs tool_call_id of 9 letters or digits.", "messages");
                r.Markup("[TOOL_RESULTS]{\"content\": ").Content(m.Content).Markup(", \"call_id\": \"").Content(id).Markup("\"}[/TOOL_RESULTS]");
            }
            else throw new ChatRenderException("This model's template takes only user and assistant roles after an optional first system message.", "messages");
        }
        return r;
    }

    // ---- gpt-oss harmony ----
    private static RenderedChat GptOss(IReadOnlyList<ChatMessage> messages, IReadOnlyList<ToolDefinition> tools, ChatRenderOptions options)
    {
        var r = new RenderedChat();
        r.Markup("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n");
        r.Markup($"Current date: {options.Now.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture)}\n\nReasoning: medium\n\n");
        r.Markup("# Valid channels: analysis, commentary, final. Channel must be included for every message.");
        if (tools.Count > 0) r.Markup("\nCalls to these tools must go to the commentary channel: 'functions'.");
        r.Markup("<|end|>");
        var loop = messages.ToList();
        var developer = "";
        if (loop.Count > 0 && loop[0].Role == "system")
        {
            developer = loop[0].Content;
            loop.RemoveAt(0);
        }
        if (developer.Length > 0 || tools.Count > 0)
        {
            r.Markup("<|start|>developer<|message|>");
            if (developer.Length > 0) r.Markup("# Instructions\n\n").Content(developer).Markup("\n\n");
            if (tools.Count > 0)
            {
                r.Markup("# Tools\n\n");
                r.Content(HarmonyNamespace(tools));
            }
            r.Markup("<|end|>");
        }
        string? lastCall = null;
        for (var i = 0; i < loop.Count; i++)
        {
            var m = loop[i];
            if (m.Role == "assistant")
            {
                if (m.ToolCalls.Count > 0)
                {
                    var laterFinal = false;
                    for (var j = i + 1; j < loop.Count; j++) laterFinal |= loop[j].Role == "assistant" && loop[j].ToolCalls.Count == 0;
                    var analysis = m.Content.Length > 0 ? m.Content : m.ReasoningContent ?? "";
                    if (analysis.Length > 0 && !laterFinal) r.Markup("<|start|>assistant<|channel|>analysis<|message|>").Content(analysis).Markup("<|end|>");
                    var call = m.ToolCalls[0];
                    r.Markup("<|start|>assistant to=").Content("functions." + call.Name).Markup("<|channel|>commentary json<|message|>")
                        .Content(PythonJson.Rewrite(call.ArgumentsJson)).Markup("<|call|>");
                    lastCall = call.Name;
                }
                else if (i == loop.Count - 1 && !options.AddGenerationPrompt)
                {
                    if (m.ReasoningContent is { } thinking) r.Markup("<|start|>assistant<|channel|>analysis<|message|>").Content(thinking).Markup("<|end|>");
                    r.Markup("<|start|>assistant<|channel|>final<|message|>").Content(m.Content).Markup("<|return|>");
                }
                else
                {
                    r.Markup("<|start|>assistant<|channel|>final<|message|>").Content(m.Content).Markup("<|end|>");
                    lastCall = null;
                }
            }
            else if (m.Role == "tool")
            {
                if (lastCall is null) throw new ChatRenderException("A tool message must follow an assistant message with a tool call.", "messages");
                r.Markup("<|start|>").Content("functions." + lastCall).Markup(" to=assistant<|channel|>commentary<|message|>").Content(PythonJson.String(m.Content)).Markup("<|end|>");
            }
            else if (m.Role == "user")
            {
                r.Markup("<|start|>user<|message|>").Content(m.Content).Markup("<|end|>");
            }
        }
        if (options.AddGenerationPrompt) r.Markup("<|start|>assistant");
        return r;
    }

    /// <summary>The harmony template's TypeScript-like tool namespace (for the common parameter shapes).</summary>
    internal static string HarmonyNamespace(IReadOnlyList<ToolDefinition> tools)
    {
        var text = new StringBuilder("## functions\n\nnamespace functions {\n\n");
        foreach (var tool in tools)
        {
            text.Append("// ").Append(tool.Description ?? "").Append('\n');
            text.Append("type ").Append(tool.Name).Append(" = ");
            using var schema = JsonDocument.Parse(tool.ParametersJson);
            var root = schema.RootElement;
            if (root.ValueKind == JsonValueKind.Object && root.TryGetProperty("properties", out var properties) && properties.ValueKind == JsonValueKind.Object
                && properties.EnumerateObject().Any())
            {
                var required = Required(root);
                text.Append("(_: {\n");
                foreach (var p in properties.EnumerateObject())
                {
                    if (p.Value.ValueKind == JsonValueKind.Object && p.Value.TryGetProperty("description", out var d) && d.ValueKind == JsonValueKind.String && d.GetString()!.Length > 0)
                        text.Append("// ").Append(d.GetString()).Append('\n');
                    text.Append(p.Name);
                    if (!required.Contains(p.Name)) text.Append('?');
                    text.Append(": ").Append(TypeScriptType(p.Value));
                    if (p.Value.ValueKind == JsonValueKind.Object && p.Value.TryGetProperty("default", out var def))
                    {
                        if (p.Value.TryGetProperty("enum", out _)) text.Append(", // default: ").Append(def.ValueKind == JsonValueKind.String ? def.GetString() : def.GetRawText());
                        else text.Append(", // default: ").Append(PythonJson.Write(def));
                    }
                    text.Append(",\n");
                }
                text.Append("}) => any;\n\n");
            }
            else text.Append("() => any;\n\n");
        }
        text.Append("} // namespace functions");
        return text.ToString();
    }

    private static HashSet<string> Required(JsonElement schema)
    {
        var required = new HashSet<string>(StringComparer.Ordinal);
        if (schema.TryGetProperty("required", out var list) && list.ValueKind == JsonValueKind.Array)
            foreach (var item in list.EnumerateArray())
                if (item.ValueKind == JsonValueKind.String) required.Add(item.GetString()!);
        return required;
    }

    private static string TypeScriptType(JsonElement spec, int depth = 0)
    {
        if (spec.ValueKind != JsonValueKind.Object || depth > 8) return "any";
        var nullable = spec.TryGetProperty("nullable", out var n) && n.ValueKind == JsonValueKind.True ? " | null" : "";
        var type = spec.TryGetProperty("type", out var t) ? t : default;
        if (type.ValueKind == JsonValueKind.Array)
        {
            var names = type.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : "any").ToArray();
            return names.Length == 0 ? "any" : string.Join(" | ", names);
        }
        var name = type.ValueKind == JsonValueKind.String ? type.GetString() : null;
        switch (name)
        {
            case "array":
                if (!spec.TryGetProperty("items", out var items)) return "any[]" + nullable;
                var itemType = items.ValueKind == JsonValueKind.Object && items.TryGetProperty("type", out var it) && it.ValueKind == JsonValueKind.String ? it.GetString() : null;
                var inner = itemType switch
                {
                    "string" => "string",
                    "number" or "integer" => "number",
                    "boolean" => "boolean",
                    _ => TypeScriptType(items, depth + 1),
                };
                if (itemType is not ("string" or "number" or "integer" or "boolean") && (inner == "object | object" || inner.Length > 50)) return "any[]" + nullable;
                return inner + "[]" + nullable;
            case "string":
                if (spec.TryGetProperty("enum", out var values) && values.ValueKind == JsonValueKind.Array && values.GetArrayLength() > 0)
                    return "\"" + string.Join("\" | \"", values.EnumerateArray().Select(v => v.ValueKind == JsonValueKind.String ? v.GetString() : v.GetRawText())) + "\"";
                return "string" + nullable;
            case "number" or "integer":
                return "number";
            case "boolean":
                return "boolean";
            case "object":
                if (!spec.TryGetProperty("properties", out var properties) || properties.ValueKind != JsonValueKind.Object || !properties.EnumerateObject().Any()) return "object";
                var required = Required(spec);
                var text = new StringBuilder("{\n");
                var first = true;
                foreach (var p in properties.EnumerateObject())
                {
                    if (!first) text.Append(", ");
                    text.Append(p.Name).Append(required.Contains(p.Name) ? "" : "?").Append(": ").Append(TypeScriptType(p.Value, depth + 1));
                    first = false;
                }
                return text.Append('}').ToString();
            default:
                return "any";
        }
    }

    // ---- DeepSeek R1 / V3 ----
    private static RenderedChat DeepSeek(ChatTemplateTraits traits, IReadOnlyList<ChatMessage> messages, IReadOnlyList<ToolDefinition> tools, ChatRenderOptions options)
    {
        var r = new RenderedChat();
        if (options.BosText is { } bos) r.Markup(bos);
        var systems = messages.Where(m => m.Role == "system").Select(m => m.Content).ToList();
        foreach (var s in systems) r.Content(s);
        if (tools.Count > 0)
        {
            // DeepSeek's templates do not print tools; llama.cpp adds them to the system text, so does this.
            r.Markup(systems.Count > 0 ? "\n\n" : "").Markup("You can call these tools:\n");
            foreach (var tool in tools) r.Content(ToolJson(tool)).Markup("\n");
            r.Markup("To call one, write <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name\n```json\n{arguments}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>");
        }
        var inTool = false;
        foreach (var m in messages)
        {
            switch (m.Role)
            {
                case "user":
                    r.Markup("<｜User｜>").Content(m.Content);
                    inTool = false;
                    break;
                case "assistant" when m.ToolCalls.Count > 0:
                    r.Markup("<｜Assistant｜>").Content(m.Content).Markup("<｜tool▁calls▁begin｜>");
                    for (var k = 0; k < m.ToolCalls.Count; k++)
                    {
                        if (k > 0) r.Markup("\n");
                        r.Markup("<｜tool▁call▁begin｜>function<｜tool▁sep｜>").Content(m.ToolCalls[k].Name).Markup("\n```json\n")
                            .Content(m.ToolCalls[k].ArgumentsJson).Markup("\n```<｜tool▁call▁end｜>");
                    }
                    r.Markup("<｜tool▁calls▁end｜><｜end▁of▁sentence｜>");
                    inTool = false;
                    break;
                case "assistant":
                {
                    var content = m.Content;
                    var end = content.LastIndexOf("</think>", StringComparison.Ordinal);
                    if (end >= 0) content = content[(end + 8)..];
                    // After tool outputs the answer follows the outputs' end marker directly.
                    r.Markup(inTool ? "<｜tool▁outputs▁end｜>" : "<｜Assistant｜>").Content(content).Markup("<｜end▁of▁sentence｜>");
                    inTool = false;
                    break;
                }
                case "tool":
                    r.Markup(inTool ? "\n<｜tool▁output▁begin｜>" : "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>").Content(m.Content).Markup("<｜tool▁output▁end｜>");
                    inTool = true;
                    break;
            }
        }
        if (inTool) r.Markup("<｜tool▁outputs▁end｜>");
        else if (options.AddGenerationPrompt) r.Markup(traits.GenerationPromptOpensThink ? "<｜Assistant｜><think>\n" : "<｜Assistant｜>");
        return r;
    }

    // ---- Generic fallback (documented in docs/api.md) ----
    /// <summary>The system text that describes tools to a model of no known family.</summary>
    public const string GenericToolsPreamble =
        "Tools you can call are listed below as JSON. To call tools, reply with only " +
        "{\"tool_calls\":[{\"name\":\"<tool name>\",\"arguments\":{<arguments>}}]}\n";

    private static string CompactJson(string json)
    {
        using var document = JsonDocument.Parse(json);
        return System.Text.Json.JsonSerializer.Serialize(document.RootElement, RelaxedJson);
    }

    private static readonly System.Text.Json.JsonSerializerOptions RelaxedJson = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static string CompactFunction(ToolDefinition tool)
    {
        using var document = JsonDocument.Parse(tool.ToolJson);
        var root = document.RootElement;
        var function = root.TryGetProperty("function", out var f) ? f : root;
        return System.Text.Json.JsonSerializer.Serialize(function, RelaxedJson);
    }

    private static RenderedChat Generic(IReadOnlyList<ChatMessage> messages, IReadOnlyList<ToolDefinition> tools)
    {
        var plain = new List<(string Role, string Content)>(messages.Count + 1);
        var start = 0;
        if (tools.Count > 0)
        {
            var system = new StringBuilder();
            if (messages.Count > 0 && messages[0].Role == "system")
            {
                system.Append(messages[0].Content).Append("\n\n");
                start = 1;
            }
            system.Append(GenericToolsPreamble);
            // Compact JSON of each function: a small model's context is short.
            foreach (var tool in tools) system.Append(CompactFunction(tool)).Append('\n');
            plain.Add(("system", system.ToString().TrimEnd('\n')));
        }
        for (var i = start; i < messages.Count; i++)
        {
            var m = messages[i];
            if (m.Role == "tool")
            {
                plain.Add(("user", "{\"tool_response\":{\"tool_call_id\":" + PythonJson.String(m.ToolCallId ?? "") + ",\"content\":" + PythonJson.String(m.Content) + "}}"));
            }
            else if (m.ToolCalls.Count > 0)
            {
                var calls = string.Join(",", m.ToolCalls.Select(c => "{\"name\":" + PythonJson.String(c.Name) + ",\"arguments\":" + CompactJson(c.ArgumentsJson) + "}"));
                plain.Add(("assistant", (m.Content.Length > 0 ? m.Content + "\n" : "") + "{\"tool_calls\":[" + calls + "]}"));
            }
            else plain.Add((m.Role, m.Content));
        }
        return new RenderedChat { PlainMessages = plain };
    }
}
