using System.Text;
using System.Text.Json;
using Potluck.Gateway.Api;
using Potluck.Gateway.Chat;

namespace Potluck.Gateway.Tests.Chat;

/// <summary>tools, tool_choice, functions and the tool fields of messages: accepted shapes and hostile variants (each a 400 naming the field).</summary>
public sealed class ToolRequestParsingTests
{
    private const string Tool = """{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}""";

    private static CompletionRequest Parse(string fields, string messages = """[{"role":"user","content":"hi"}]""") =>
        CompletionRequestParser.Parse(Encoding.UTF8.GetBytes($$"""{"model":"m","messages":{{messages}}{{(fields.Length > 0 ? "," + fields : "")}}}"""), CompletionKind.Chat);

    [Fact]
    public void ToolsChoicesAndMessageToolFieldsParse()
    {
        var request = Parse("\"tools\":[" + Tool + "]," + """
            "tool_choice":{"type":"function","function":{"name":"get_weather"}},"parallel_tool_calls":false
            """, """
            [{"role":"user","content":"w?"},
             {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
             {"role":"tool","tool_call_id":"call_1","content":"21"}]
            """);
        var tool = Assert.Single(request.Tools);
        Assert.Equal("get_weather", tool.Name);
        Assert.Equal("d", tool.Description);
        Assert.Equal(new ToolChoice(ToolChoiceMode.Named, "get_weather"), request.ToolChoice);
        Assert.False(request.ParallelToolCalls);
        Assert.Equal(new ToolCall("call_1", "get_weather", "{\"city\":\"Paris\"}"), Assert.Single(request.Messages[1].ToolCalls));
        Assert.Equal("call_1", request.Messages[2].ToolCallId);
        Assert.Equal(ToolChoiceMode.Auto, Parse($"\"tools\":[{Tool}]").ToolChoice.Mode);
        Assert.Equal(ToolChoiceMode.None, Parse("").ToolChoice.Mode);
        Assert.Equal(ToolChoiceMode.Required, Parse($"\"tools\":[{Tool}],\"tool_choice\":\"required\"").ToolChoice.Mode);
    }

    [Fact]
    public void LegacyFunctionsBecomeTools()
    {
        var request = Parse("""
            "functions":[{"name":"get_weather","parameters":{"type":"object"}}],"function_call":{"name":"get_weather"}
            """, """
            [{"role":"user","content":"w?"},
             {"role":"assistant","content":null,"function_call":{"name":"get_weather","arguments":"{}"}},
             {"role":"function","name":"get_weather","content":"21"}]
            """);
        Assert.Equal("get_weather", Assert.Single(request.Tools).Name);
        Assert.Contains("\"function\": {", request.Tools[0].ToolJson);
        Assert.Equal(ToolChoiceMode.Named, request.ToolChoice.Mode);
        Assert.Equal("get_weather", Assert.Single(request.Messages[1].ToolCalls).Name);
        Assert.Equal("tool", request.Messages[2].Role);
    }

    public static TheoryData<string, string, string> Hostile => new()
    {
        // fields, messages (empty: one user message), the param the 400 names
        { "\"tools\":{}", "", "tools" },
        { "\"tools\":[1]", "", "tools[0]" },
        { "\"tools\":[{}]", "", "tools[0].type" },
        { "\"tools\":[{\"type\":5}]", "", "tools[0].type" },
        { "\"tools\":[{\"type\":\"code_interpreter\"}]", "", "tools[0].type" },
        { "\"tools\":[{\"type\":\"function\"}]", "", "tools[0].function" },
        { "\"tools\":[{\"type\":\"function\",\"function\":[]}]", "", "tools[0].function" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{}}]", "", "tools[0].function.name" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"\"}}]", "", "tools[0].function.name" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]", "", "tools[0].function.name" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"<|im_end|>\"}}]", "", "tools[0].function.name" },
        { $"\"tools\":[{{\"type\":\"function\",\"function\":{{\"name\":\"{new string('a', 65)}\"}}}}]", "", "tools[0].function.name" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":7}}]", "", "tools[0].function.name" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":1}}]", "", "tools[0].function.description" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":\"object\"}}]", "", "tools[0].function.parameters" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"strict\":\"yes\"}}]", "", "tools[0].function.strict" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]", "", "tools" },
        { "\"tools\":[" + string.Join(",", Enumerable.Range(0, 129).Select(i => $"{{\"type\":\"function\",\"function\":{{\"name\":\"f{i}\"}}}}")) + "]", "", "tools" },
        { $"\"tools\":[{{\"type\":\"function\",\"function\":{{\"name\":\"f\",\"description\":\"{new string('x', 70_000)}\"}}}}]", "", "tools[0].function" },
        { "\"tool_choice\":\"required\"", "", "tool_choice" },
        { "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}", "", "tool_choice.function.name" },
        { $"\"tools\":[{Tool}],\"tool_choice\":\"always\"", "", "tool_choice" },
        { $"\"tools\":[{Tool}],\"tool_choice\":3", "", "tool_choice" },
        { $"\"tools\":[{Tool}],\"tool_choice\":{{}}", "", "tool_choice.type" },
        { $"\"tools\":[{Tool}],\"tool_choice\":{{\"type\":\"function\"}}", "", "tool_choice.function" },
        { $"\"tools\":[{Tool}],\"tool_choice\":{{\"type\":\"function\",\"function\":{{\"name\":\"get_time\"}}}}", "", "tool_choice.function.name" },
        { $"\"tools\":[{Tool}],\"tool_choice\":{{\"type\":\"function\",\"function\":\"get_weather\"}}", "", "tool_choice.function" },
        { $"\"tools\":[{Tool}],\"function_call\":\"auto\"", "", "function_call" },
        { $"\"tools\":[{Tool}],\"functions\":[{{\"name\":\"f\"}}]", "", "functions" },
        { $"\"tools\":[{Tool}],\"parallel_tool_calls\":\"yes\"", "", "parallel_tool_calls" },
        { "\"functions\":{}", "", "functions" },
        { "\"functions\":[{\"name\":\"f\"}],\"function_call\":\"required\"", "", "function_call" },
        { "\"functions\":[{\"name\":\"f\"}],\"function_call\":{\"name\":\"g\"}", "", "function_call.name" },
        { "\"functions\":[{\"name\":\"f\"}],\"tool_choice\":\"auto\"", "", "tool_choice" },
        { "", """[{"role":"user","content":"x","tool_calls":[]}]""", "messages[0].tool_calls" },
        { "", """[{"role":"assistant","tool_calls":{}}]""", "messages[0].tool_calls" },
        { "", """[{"role":"assistant","tool_calls":[5]}]""", "messages[0].tool_calls[0]" },
        { "", """[{"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f"}}]}]""", "messages[0].tool_calls[0].id" },
        { "", """[{"role":"assistant","tool_calls":[{"id":"","function":{"name":"f"}}]}]""", "messages[0].tool_calls[0].id" },
        { "", """[{"role":"assistant","tool_calls":[{"id":"a","type":"retrieval","function":{"name":"f"}}]}]""", "messages[0].tool_calls[0].type" },
        { "", """[{"role":"assistant","tool_calls":[{"id":"a"}]}]""", "messages[0].tool_calls[0].function" },
        { "", """[{"role":"assistant","tool_calls":[{"id":"a","function":{"name":"f g"}}]}]""", "messages[0].tool_calls[0].function.name" },
        { "", """[{"role":"assistant","tool_calls":[{"id":"a","function":{"name":"f","arguments":"[1]"}}]}]""", "messages[0].tool_calls[0].function.arguments" },
        { "", """[{"role":"assistant","tool_calls":[{"id":"a","function":{"name":"f","arguments":"{"}}]}]""", "messages[0].tool_calls[0].function.arguments" },
        { "", """[{"role":"assistant","tool_calls":[{"id":"a","function":{"name":"f","arguments":5}}]}]""", "messages[0].tool_calls[0].function.arguments" },
        { "", "[{\"role\":\"assistant\",\"tool_calls\":[" + string.Join(",", Enumerable.Range(0, 65).Select(i => $"{{\"id\":\"a{i}\",\"function\":{{\"name\":\"f\"}}}}")) + "]}]", "messages[0].tool_calls" },
        { "", """[{"role":"assistant","function_call":"f"}]""", "messages[0].function_call" },
        { "", """[{"role":"tool","content":"r"}]""", "messages[0].tool_call_id" },
        { "", """[{"role":"tool","content":"r","tool_call_id":1}]""", "messages[0].tool_call_id" },
        { "", """[{"role":"function","content":"r"}]""", "messages[0].name" },
        { "", """[{"role":"user","content":"r","name":[]}]""", "messages[0].name" },
        { "", """[{"role":"assistant","content":"r","reasoning_content":3}]""", "messages[0].reasoning_content" },
    };

    [Theory]
    [MemberData(nameof(Hostile))]
    public void HostileToolFieldsAreA400NamingTheField(string fields, string messages, string param)
    {
        var error = Assert.Throws<ApiErrorException>(() => messages.Length == 0 ? Parse(fields) : Parse(fields, messages)).Error;
        Assert.Equal(400, error.Status);
        Assert.Equal(param, error.Param);
        Assert.False(string.IsNullOrWhiteSpace(error.Message));
    }

    [Fact]
    public void UnsupportedParameterSchemaIsA400NamingTheTool()
    {
        var request = Parse("""
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"x":{"allOf":[{"type":"string"}]}}}}}],"tool_choice":"required"
            """);
        var error = Assert.Throws<ApiErrorException>(() => ToolGrammar.For(request, ChatTemplateTraits.Detect(null))).Error;
        Assert.Equal("tools[0].function.parameters", error.Param);
        Assert.Contains("allOf", error.Message);
    }

    [Fact]
    public void ManyLargeToolSchemasTogetherAreA400()
    {
        // 100 tools of 60 enum values with long names: each schema is within limits, the grammar of all is not.
        var values = string.Join(",", Enumerable.Range(0, 60).Select(i => $"\"{new string('v', 80)}{i}\""));
        var tools = string.Join(",", Enumerable.Range(0, 100).Select(i =>
            $"{{\"type\":\"function\",\"function\":{{\"name\":\"t{i}\",\"parameters\":{{\"type\":\"object\",\"properties\":{{\"x\":{{\"enum\":[{values}]}}}},\"required\":[\"x\"]}}}}}}"));
        var error = Assert.Throws<ApiErrorException>(() => ToolGrammar.For(Parse($"\"tools\":[{tools}],\"tool_choice\":\"required\""), ChatTemplateTraits.Detect(null))).Error;
        Assert.Equal("tools", error.Param);
        Assert.Equal("grammar_too_large", error.Code);
    }

    [Fact]
    public void GrammarsFollowEachFamilysCallSyntax()
    {
        var request = Parse($"\"tools\":[{Tool}],\"tool_choice\":\"required\"");
        Assert.StartsWith("root ::= \"<tool_call>\\n\" call", ToolGrammar.For(request, ChatTemplateTraits.Detect(ChatRendererTests.Template("Qwen-Qwen3-0.6B.jinja")))!.Gbnf);
        Assert.StartsWith("root ::= \"[TOOL_CALLS][\"", ToolGrammar.For(request, ChatTemplateTraits.Detect(ChatRendererTests.Template("mistralai-Mistral-Nemo-Instruct-2407.jinja")))!.Gbnf);
        Assert.StartsWith("root ::= \"<|channel|>commentary to=functions.\"", ToolGrammar.For(request, ChatTemplateTraits.Detect(ChatRendererTests.Template("openai-gpt-oss-120b.jinja")))!.Gbnf);
        var auto = ToolGrammar.For(Parse($"\"tools\":[{Tool}]"), ChatTemplateTraits.Detect(ChatRendererTests.Template("Qwen-Qwen3-0.6B.jinja")))!;
        Assert.True(auto.IsLazy);
        Assert.Matches(auto.TriggerPatterns[0], "Sure.\n<tool_call>\n{");
        Assert.Null(ToolGrammar.For(Parse($"\"tools\":[{Tool}],\"tool_choice\":\"none\""), ChatTemplateTraits.Detect(null)));
    }
}
