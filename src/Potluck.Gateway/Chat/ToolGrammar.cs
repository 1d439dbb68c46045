using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Potluck.Gateway.Api;
using Potluck.Gateway.Grammar;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Chat;

/// <summary>
/// Grammars that make tool calls valid: with tool_choice required or a named tool the whole output is a call in
/// the family's syntax whose arguments match the tool's parameter schema; with auto, a lazy grammar that starts
/// when the output reaches the family's call marker (llama.cpp's approach in common/chat.cpp).
/// </summary>
public static class ToolGrammar
{
    public const int MaxGrammarCharacters = 512 * 1024;

    /// <summary>The grammar for this request, or null when its tools need none (no tools, tool_choice none).</summary>
    public static GrammarSpec? For(CompletionRequest request, ChatTemplateTraits traits)
    {
        if (!ChatPrompt.ParsesTools(request)) return null;
        var tools = request.ToolChoice.Mode == ToolChoiceMode.Named
            ? request.Tools.Where(t => t.Name == request.ToolChoice.Name).ToList()
            : request.Tools.ToList();
        var lazy = request.ToolChoice.Mode == ToolChoiceMode.Auto;
        var rules = new StringBuilder();
        var callNames = new List<string>();
        for (var i = 0; i < tools.Count; i++)
        {
            var args = $"tool{i}-args";
            rules.Append(ArgumentRules(tools[i], args, $"tools[{request.Tools.ToList().IndexOf(tools[i])}].function.parameters"));
            rules.Append($"tool{i}-call ::= {Call(traits.Family, tools[i].Name, args)}\n");
            callNames.Add($"tool{i}-call");
        }
        var call = "call ::= " + string.Join(" | ", callNames) + "\n";
        var (root, trigger) = Root(traits.Family, request.ParallelToolCalls);
        var gbnf = "root ::= " + root + "\n" + call + rules + JsonRules;
        // Each schema is capped by JsonSchemaGrammar.Limits; all the tools together are capped here, before llama.cpp parses it.
        if (gbnf.Length > MaxGrammarCharacters)
            throw new ApiErrorException(ApiError.BadRequest(
                $"The tools' parameter schemas make a grammar of {gbnf.Length} characters; at most {MaxGrammarCharacters} are accepted. Send fewer or smaller tools.",
                "tools", "grammar_too_large"));
        return lazy ? new GrammarSpec(gbnf, "root", [trigger], []) : new GrammarSpec(gbnf);
    }

    private static string Literal(string text)
    {
        var s = new StringBuilder("\"");
        foreach (var c in text)
        {
            switch (c)
            {
                case '"': s.Append("\\\""); break;
                case '\\': s.Append("\\\\"); break;
                case '\n': s.Append("\\n"); break;
                case '\r': s.Append("\\r"); break;
                case '\t': s.Append("\\t"); break;
                default: s.Append(c); break;
            }
        }
        return s.Append('"').ToString();
    }

    /// <summary>One call of the named tool in the family's syntax (arguments from rule <paramref name="args"/>).</summary>
    private static string Call(ChatFamily family, string name, string args) => family switch
    {
        ChatFamily.Llama3 => $"\"{{\" ws {Literal("\"name\"")} ws \":\" ws {Literal(PythonJson.String(name))} ws \",\" ws {Literal("\"parameters\"")} ws \":\" ws {args} ws \"}}\"",
        ChatFamily.GptOss => $"{Literal(name)} \" <|constrain|>json<|message|>\" {args}",
        ChatFamily.DeepSeek => $"\"<｜tool▁call▁begin｜>function<｜tool▁sep｜>\" {Literal(name)} \"\\n```json\\n\" {args} \"\\n```<｜tool▁call▁end｜>\"",
        ChatFamily.Generic => $"{Literal("{\"name\":" + PythonJson.String(name) + ",\"arguments\":")} {args} \"}}\"",
        _ => $"\"{{\" ws {Literal("\"name\"")} ws \":\" ws {Literal(PythonJson.String(name))} ws \",\" ws {Literal("\"arguments\"")} ws \":\" ws {args} ws \"}}\"",
    };

    /// <summary>The root rule (one or, with parallel calls, several calls) and the lazy trigger pattern, per family.</summary>
    private static (string Root, string Trigger) Root(ChatFamily family, bool parallel)
    {
        string many(string one, string separator) => parallel ? $"{one} ({separator} {one})*" : one;
        return family switch
        {
            ChatFamily.Hermes => (many("\"<tool_call>\\n\" call \"\\n</tool_call>\"", "\"\\n\""), @"[\s\S]*?(<tool_call>)[\s\S]*"),
            ChatFamily.Mistral => ("\"[TOOL_CALLS][\" " + many("call", "\", \"") + " \"]\"", @"[\s\S]*?(\[TOOL_CALLS\])[\s\S]*"),
            ChatFamily.Llama3 => ("call", @"^\s*(\{)[\s\S]*"),
            ChatFamily.GptOss => ("\"<|channel|>commentary to=functions.\" call", @"[\s\S]*?(<\|channel\|>commentary to=functions\.)[\s\S]*"),
            ChatFamily.DeepSeek => ("\"<｜tool▁calls▁begin｜>\" " + many("call", "\"\\n\"") + " \"<｜tool▁calls▁end｜>\"", @"[\s\S]*?(<｜tool▁calls▁begin｜>)[\s\S]*"),
            // The generic format is written compactly, as the prompt shows it (a small model's context is short).
            _ => ("\"{\\\"tool_calls\\\":[\" " + many("call", "\",\"") + " \"]}\"", @"^\s*(\{)[\s\S]*"),
        };
    }

    /// <summary>Rules for a tool's arguments from its parameter schema (JsonSchemaGrammar); unsupported schema features are a 400.</summary>
    private static string ArgumentRules(ToolDefinition tool, string rule, string param)
    {
        using var schema = JsonDocument.Parse(tool.ParametersJson);
        // "parameters": {} (or no properties) allows any object, as OpenAI treats it.
        var root = schema.RootElement;
        if (!root.EnumerateObject().Any() || (root.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() == "object"
                && !root.TryGetProperty("properties", out _) && !root.TryGetProperty("additionalProperties", out _)))
            return $"{rule} ::= json-object\n";
        try
        {
            // Arguments keep at most one space between tokens: a weak model under the schema's usual newline-and-20-tabs
            // whitespace spends its whole budget on blanks and never finishes the call.
            return JsonSchemaGrammar.ToGbnf(root, rule, compactWhitespace: true);
        }
        catch (JsonSchemaGrammarException e)
        {
            throw new ApiErrorException(ApiError.BadRequest($"Invalid schema for '{param}': {e.Message}", param, "unsupported_schema"));
        }
    }

    /// <summary>Generic JSON, with bounded whitespace so a random model cannot spin in blanks.</summary>
    private const string JsonRules =
        "json-object ::= \"{\" ws ( json-string ws \":\" ws json-value ( ws \",\" ws json-string ws \":\" ws json-value )* )? ws \"}\"\n" +
        "json-array ::= \"[\" ws ( json-value ( ws \",\" ws json-value )* )? ws \"]\"\n" +
        "json-value ::= json-object | json-array | json-string | json-number | \"true\" | \"false\" | \"null\"\n" +
        "json-string ::= \"\\\"\" ( [^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4} ) )* \"\\\"\"\n" +
        "json-number ::= \"-\"? ( \"0\" | [1-9] [0-9]{0,15} ) ( \".\" [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?\n" +
        "ws ::= | \" \"\n";
}
