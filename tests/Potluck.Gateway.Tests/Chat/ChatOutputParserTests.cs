using Potluck.Gateway.Chat;

namespace Potluck.Gateway.Tests.Chat;

/// <summary>Each family's model output split into content, reasoning and tool calls, fed whole and character by character.</summary>
public sealed class ChatOutputParserTests
{
    private static ChatTemplateTraits Traits(string file) => ChatTemplateTraits.Detect(ChatRendererTests.Template(file));

    private static (string Content, string Reasoning, List<ToolCall> Calls) Parse(ChatTemplateTraits traits, string output, bool byCharacter, bool tools = true, bool parallel = true)
    {
        var parser = new ChatOutputParser(traits, tools, parallel);
        var events = new List<ChatOutputEvent>();
        if (byCharacter)
            foreach (var c in output) parser.Push(c.ToString(), events);
        else parser.Push(output, events);
        parser.Finish(events);
        var content = string.Concat(events.Where(e => e.Kind == ChatOutputKind.Content).Select(e => e.Text));
        var reasoning = string.Concat(events.Where(e => e.Kind == ChatOutputKind.Reasoning).Select(e => e.Text));
        return (content, reasoning, events.Where(e => e.Kind == ChatOutputKind.ToolCall).Select(e => e.Call!).ToList());
    }

    public static TheoryData<string, string, string, string, string[]> Outputs => new()
    {
        // template, model output, content, reasoning, calls as "name arguments"
        { "Qwen-Qwen3-0.6B.jinja", "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "Let me check.\n", "", ["get_weather {\"city\":\"Paris\"}"] },
        { "Qwen-Qwen3-0.6B.jinja", "<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
            "\n", "The user wants weather.", ["get_weather {\"city\":\"Paris\"}", "get_time {}"] },
        { "Qwen-Qwen3-0.6B.jinja", "<think>ok</think>\n\nIt is 21 degrees < 30.", "It is 21 degrees < 30.", "ok", [] },
        { "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "<tool_call>\n{\"arguments\": {\"city\": \"Rome\"}, \"name\": \"get_weather\"}\n</tool_call>", "", "", ["get_weather {\"city\":\"Rome\"}"] },
        { "meta-llama-Llama-3.2-3B-Instruct.jinja", "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "", "", ["get_weather {\"city\":\"Paris\"}"] },
        { "meta-llama-Llama-3.2-3B-Instruct.jinja", "  {\"type\": \"function\", \"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "", "", ["get_weather {\"city\":\"Paris\"}"] },
        { "meta-llama-Llama-3.2-3B-Instruct.jinja", "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", "", "", ["get_weather {\"city\":\"Oslo\"}"] },
        { "meta-llama-Llama-3.2-3B-Instruct.jinja", "It is {sunny} today.", "It is {sunny} today.", "", [] },
        { "mistralai-Mistral-Nemo-Instruct-2407.jinja", "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"abc123DEF\"}]", "", "", ["get_weather {\"city\":\"Paris\"}"] },
        { "mistralai-Mistral-Nemo-Instruct-2407.jinja", "Sure. [TOOL_CALLS] is how I call tools.", "Sure.  is how I call tools.", "", [] },
        { "openai-gpt-oss-120b.jinja", "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}",
            "", "Need the weather.", ["get_weather {\"city\":\"Paris\"}"] },
        { "openai-gpt-oss-120b.jinja", " to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Paris\"}", "", "", ["get_weather {\"city\":\"Paris\"}"] },
        { "openai-gpt-oss-120b.jinja", "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>Hello there!", "Hello there!", "Simple.", [] },
        { "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
            "<think>\nweather\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "", "weather", ["get_weather {\"city\":\"Paris\"}"] },
        { "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "<think>a</think>The answer is 4.", "The answer is 4.", "a", [] },
    };

    [Theory]
    [MemberData(nameof(Outputs))]
    public void OutputSplitsIntoContentReasoningAndCalls(string template, string output, string content, string reasoning, string[] calls)
    {
        foreach (var byCharacter in new[] { false, true })
        {
            var parsed = Parse(Traits(template), output, byCharacter);
            Assert.Equal(content.TrimStart(), parsed.Content);
            Assert.Equal(reasoning, parsed.Reasoning);
            Assert.Equal(calls, parsed.Calls.Select(c => c.Name + " " + c.ArgumentsJson));
            foreach (var call in parsed.Calls) Assert.False(string.IsNullOrEmpty(call.Id));
        }
    }

    [Fact]
    public void GenericOutputIsACallOnlyWhenItIsTheToolCallsObject()
    {
        var generic = ChatTemplateTraits.Detect(null);
        var call = Parse(generic, " {\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]}", byCharacter: true);
        Assert.Equal("", call.Content);
        Assert.Equal("get_weather", Assert.Single(call.Calls).Name);
        var text = Parse(generic, "{\"answer\": 42}", byCharacter: true);
        Assert.Equal("{\"answer\": 42}", text.Content);
        Assert.Empty(text.Calls);
    }

    [Fact]
    public void MistralCallsKeepTheirIdsAndOthersGetNewOnes()
    {
        var mistral = Parse(Traits("mistralai-Mistral-Nemo-Instruct-2407.jinja"), "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}]", byCharacter: false);
        Assert.Matches("^[A-Za-z0-9]{9}$", Assert.Single(mistral.Calls).Id);
        var hermes = Parse(Traits("Qwen-Qwen3-0.6B.jinja"), "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", byCharacter: false);
        Assert.StartsWith("call_", Assert.Single(hermes.Calls).Id);
    }

    [Fact]
    public void WithoutToolsOrParallelCallsMarkersStayTextOrOnlyTheFirstCallCounts()
    {
        var qwen = Traits("Qwen-Qwen3-0.6B.jinja");
        const string two = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
        Assert.Equal("a", Assert.Single(Parse(qwen, two, byCharacter: false, parallel: false).Calls).Name);
        var none = Parse(qwen, two, byCharacter: true, tools: false);
        Assert.Empty(none.Calls);
        Assert.Equal(two, none.Content);
    }

    [Fact]
    public void AnUnfinishedOrBrokenCallIsShownAsText()
    {
        var qwen = Traits("Qwen-Qwen3-0.6B.jinja");
        var cut = Parse(qwen, "<tool_call>\n{\"name\": \"get_weather\", \"argu", byCharacter: true);
        Assert.Empty(cut.Calls);
        Assert.Equal("\n{\"name\": \"get_weather\", \"argu", cut.Content);
        var broken = Parse(qwen, "<tool_call>not json</tool_call>after", byCharacter: false);
        Assert.Empty(broken.Calls);
        Assert.Equal("not jsonafter", broken.Content);
    }
}
