using System.Text;
using System.Text.Json;
using Potluck.Gateway.Api;
using Potluck.Gateway.Api.Anthropic;
using Potluck.Gateway.Chat;

namespace Potluck.Gateway.Tests;

/// <summary>Parsing of /v1/messages bodies into the shared chat request, and the hostile bodies it refuses.</summary>
public sealed class AnthropicRequestTests
{
    private static MessagesRequest Parse(string json) => MessagesRequestParser.Parse(Encoding.UTF8.GetBytes(json));

    [Fact]
    public void SystemTextBlocksAndStringsGiveTheSameSystemMessage()
    {
        var blocks = Parse("""{"model":"m","max_tokens":5,"system":[{"type":"text","text":"Be "},{"type":"text","text":"brief.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"hi"}]}""");
        var text = Parse("""{"model":"m","max_tokens":5,"system":"Be brief.","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}""");
        Assert.Equal([new ChatMessage("system", "Be brief."), new ChatMessage("user", "hi")], blocks.Chat.Messages);
        Assert.Equal(blocks.Chat.Messages, text.Chat.Messages);
        var both = Parse("""{"model":"m","max_tokens":5,"system":"Be brief.","messages":[{"role":"system","content":"Be kind."},{"role":"user","content":"hi"}]}""");
        Assert.Equal([new ChatMessage("system", "Be brief.\n\nBe kind."), new ChatMessage("user", "hi")], both.Chat.Messages);
        Assert.Equal(CompletionKind.Chat, blocks.Chat.Kind);
        Assert.Equal(5, blocks.Chat.MaxTokens);
        Assert.Null(blocks.Prefill);
    }

    [Fact]
    public void SamplingStopSequencesStreamAndMetadataAreMapped()
    {
        var request = Parse("""
            {"model":"m","max_tokens":7,"temperature":0.25,"top_p":0.5,"top_k":40,"stream":true,"stop_sequences":["END","\n\n"],
             "metadata":{"user_id":"user-1"},"service_tier":"auto","thinking":{"type":"disabled"},"messages":[{"role":"user","content":"hi"}]}
            """).Chat;
        Assert.Equal(0.25f, request.Temperature);
        Assert.Equal(0.5f, request.TopP);
        Assert.Equal(40, request.TopK);
        Assert.True(request.Stream);
        Assert.Equal(["END", "\n\n"], request.Stop);
        Assert.Equal("user-1", request.User);
        // Anthropic's defaults: temperature 1, no nucleus or top-k truncation.
        var plain = Parse("""{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}""").Chat;
        Assert.Equal((1f, 1f, 0, false), (plain.Temperature, plain.TopP, plain.TopK, plain.Stream));
    }

    [Fact]
    public void AFinalAssistantTurnIsAPrefillAndConsecutiveTurnsOfOneRoleAreCombined()
    {
        var request = Parse("""
            {"model":"m","max_tokens":5,"messages":[
              {"role":"user","content":"one"},{"role":"user","content":[{"type":"text","text":"two"}]},
              {"role":"assistant","content":[{"type":"thinking","thinking":"hidden","signature":"s"},{"type":"text","text":"reply"}]},
              {"role":"system","content":"Now be formal."},
              {"role":"user","content":"three"},{"role":"assistant","content":"The answer is"}]}
            """);
        Assert.Equal([new ChatMessage("user", "one\n\ntwo"), new ChatMessage("assistant", "reply"), new ChatMessage("system", "Now be formal."), new ChatMessage("user", "three")],
            request.Chat.Messages);
        Assert.Equal("The answer is", request.Prefill);
    }

    [Fact]
    public void ToolsToolUseAndToolResultsBecomeTheChatRequestsTools()
    {
        var request = Parse("""
            {"model":"m","max_tokens":50,"tool_choice":{"type":"tool","name":"get_weather","disable_parallel_tool_use":true},
             "tools":[{"name":"get_weather","description":"Weather now","input_schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]},"cache_control":{"type":"ephemeral"}},
                      {"type":"custom","name":"get_time","input_schema":{"type":"object"}}],
             "messages":[
              {"role":"user","content":"Weather in Paris?"},
              {"role":"assistant","content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"18 C"}]},{"type":"text","text":"And now?"}]},
              {"role":"assistant","content":[{"type":"tool_use","id":"toolu_2","name":"get_weather","input":{"city":"Paris"}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_2","content":"timeout","is_error":true}]}]}
            """).Chat;
        Assert.Equal(["get_weather", "get_time"], request.Tools.Select(t => t.Name));
        Assert.Equal("Weather now", request.Tools[0].Description);
        using (var tool = JsonDocument.Parse(request.Tools[0].ToolJson))
        {
            // The template sees the OpenAI tool the same function would be.
            Assert.Equal("function", tool.RootElement.GetProperty("type").GetString());
            Assert.Equal("get_weather", tool.RootElement.GetProperty("function").GetProperty("name").GetString());
            Assert.Equal("string", tool.RootElement.GetProperty("function").GetProperty("parameters").GetProperty("properties").GetProperty("city").GetProperty("type").GetString());
        }
        Assert.Equal("""{"type":"object"}""", request.Tools[1].ParametersJson);
        Assert.Equal(new ToolChoice(ToolChoiceMode.Named, "get_weather"), request.ToolChoice);
        Assert.False(request.ParallelToolCalls);

        var m = request.Messages;
        Assert.Equal(["user", "assistant", "tool", "user", "assistant", "tool"], m.Select(x => x.Role));
        Assert.Equal("Checking.", m[1].Content);
        Assert.Equal([new ToolCall("toolu_1", "get_weather", """{"city":"Paris"}""")], m[1].ToolCalls);
        Assert.Equal(("18 C", "toolu_1", "get_weather"), (m[2].Content, m[2].ToolCallId, m[2].Name));
        Assert.Equal("And now?", m[3].Content);
        Assert.Equal("", m[4].Content);
        Assert.Equal(("Error: timeout", "toolu_2"), (m[5].Content, m[5].ToolCallId));
    }

    [Fact]
    public void OutputConfigFormatBecomesASchemaGrammarAndEffortIsAccepted()
    {
        var request = Parse("""
            {"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],
             "output_config":{"effort":"low","format":{"type":"json_schema","schema":{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}}}}
            """).Chat;
        Assert.NotNull(request.Grammar);
        Assert.Contains("root ::=", request.Grammar!.Gbnf);
        Assert.NotNull(Parse("""{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"output_format":{"type":"json_schema","schema":{"type":"string"}}}""").Chat.Grammar);
        Assert.Null(Parse("""{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"output_config":{"effort":"high"}}""").Chat.Grammar);
    }

    [Fact]
    public void ToolChoiceDefaultsAndModesMapToOpenAis()
    {
        const string tools = """ "tools":[{"name":"f","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"hi"}] """;
        ToolChoice Choice(string extra) => Parse($$"""{"model":"m","max_tokens":5,{{tools}}{{extra}}}""").Chat.ToolChoice;
        Assert.Equal(ToolChoice.Auto, Choice(""));
        Assert.Equal(ToolChoice.Auto, Choice(""","tool_choice":{"type":"auto"}"""));
        Assert.Equal(ToolChoice.None, Choice(""","tool_choice":{"type":"none"}"""));
        Assert.Equal(new ToolChoice(ToolChoiceMode.Required), Choice(""","tool_choice":{"type":"any"}"""));
        Assert.Equal(ToolChoice.None, Parse("""{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}""").Chat.ToolChoice);
    }

    [Fact]
    public void TheStopSequenceMatcherNamesTheEarliestMatch()
    {
        var matcher = new Streaming.StopSequenceMatcher(["END", "ab"]);
        Assert.Equal("x", matcher.Add("x"));
        Assert.Equal("a", matcher.Add("aEN"));
        Assert.Null(matcher.MatchedStop);
        // "END" begins before "ab" does: it is the one that stopped the text.
        Assert.Equal("", matcher.Add("Dab"));
        Assert.Equal(("END", 2), (matcher.MatchedStop, matcher.StopOffset));
    }

    [Theory]
    [MemberData(nameof(HostileCases))]
    public void HostileBodiesAre400sNamingTheField(string body, string field)
    {
        var error = Assert.Throws<ApiErrorException>(() => Parse(body)).Error;
        Assert.Equal(400, error.Status);
        Assert.Contains(field, error.Message);
        // The Anthropic shape on the wire.
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream)) AnthropicErrors.Write(writer, error);
        AnthropicSdkTests.AssertAnthropicError(Encoding.UTF8.GetString(stream.ToArray()), "invalid_request_error", field);
    }

    public static TheoryData<string, string> HostileCases()
    {
        var data = new TheoryData<string, string>();
        foreach (var (body, field) in HostileBodies("m")) data.Add(body, field);
        return data;
    }

    /// <summary>Bodies that must be refused with a 400, and a word the message must contain (usually the field's path).</summary>
    public static IEnumerable<(string Body, string Field)> HostileBodies(string model)
    {
        var m = JsonSerializer.Serialize(model);
        const string user = """[{"role":"user","content":"hi"}]""";
        string With(string fields) => $$"""{"model":{{m}},"max_tokens":8,"messages":{{user}},{{fields}}}""";
        return
        [
            ("", "empty"),
            ("[1,2]", "JSON object"),
            ("{\"model\":", "not valid JSON"),
            ($$$"""{"max_tokens":8,"messages":{{{user}}}}""", "model"),
            ($$$"""{"model":5,"max_tokens":8,"messages":{{{user}}}}""", "model"),
            ($$$"""{"model":{{{m}}},"messages":{{{user}}}}""", "max_tokens"),
            ($$$"""{"model":{{{m}}},"max_tokens":0,"messages":{{{user}}}}""", "max_tokens"),
            ($$$"""{"model":{{{m}}},"max_tokens":"8","messages":{{{user}}}}""", "max_tokens"),
            ($$$"""{"model":{{{m}}},"max_tokens":2.5,"messages":{{{user}}}}""", "max_tokens"),
            ($$$"""{"model":{{{m}}},"max_tokens":8}""", "messages"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[]}""", "messages"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":{"role":"user"} }""", "messages"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":["hi"]}""", "messages.0"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"content":"hi"}]}""", "messages.0.role"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"tool","content":"hi"}]}""", "messages.0.role"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user"}]}""", "messages.0.content"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":42}]}""", "messages.0.content"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":[{"text":"hi"}]}]}""", "messages.0.content.0.type"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":[{"type":"text"}]}]}""", "messages.0.content.0.text"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA=="} }]}]}""", "messages.0.content.0.type"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":[{"type":"hologram"}]}]}""", "hologram"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"trailing "}]}""", "trailing whitespace"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"assistant","content":"alone"}]}""", "user turn"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":"\ud800"}]}""", "messages.0.content"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"system","content":[{"type":"document"}]}]}""", "messages.0.content.0.type"),
            (With("\"system\":7"), "system"),
            (With("\"system\":[{\"type\":\"image\"}]"), "system.0.type"),
            (With("\"system\":[\"plain\"]"), "system.0"),
            (With("\"temperature\":1.5"), "temperature"),
            (With("\"temperature\":\"hot\""), "temperature"),
            (With("\"top_p\":-0.1"), "top_p"),
            (With("\"top_k\":-1"), "top_k"),
            (With("\"stream\":\"yes\""), "stream"),
            (With("\"stop_sequences\":\"END\""), "stop_sequences"),
            (With("\"stop_sequences\":[\"\"]"), "stop_sequences"),
            (With("\"stop_sequences\":[7]"), "stop_sequences"),
            (With($"\"stop_sequences\":[{string.Join(",", Enumerable.Repeat("\"x\"", 17))}]"), "stop_sequences"),
            (With($"\"stop_sequences\":[\"{new string('x', 300)}\"]"), "stop_sequences"),
            (With("\"metadata\":\"me\""), "metadata"),
            (With("\"metadata\":{\"user_id\":5}"), "metadata.user_id"),
            (With("\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1024}"), "thinking"),
            (With("\"thinking\":{\"type\":\"sometimes\"}"), "thinking.type"),
            (With("\"service_tier\":\"priority\""), "service_tier"),
            (With("\"container\":\"container_1\""), "container"),
            (With("\"output_config\":\"json\""), "output_config"),
            (With("\"output_config\":{\"effort\":\"extreme\"}"), "output_config.effort"),
            (With("\"output_config\":{\"format\":{\"type\":\"xml\"}}"), "output_config.format.type"),
            (With("\"output_config\":{\"format\":{\"type\":\"json_schema\"}}"), "output_config.format.schema"),
            (With("\"output_config\":{\"format\":{\"type\":\"json_schema\",\"schema\":true}}"), "output_config.format.schema"),
            (With("\"output_config\":{\"format\":{\"type\":\"json_schema\",\"schema\":{\"type\":\"frobnicate\"}}}"), "output_config.format.schema"),
            (With("\"output_format\":{\"type\":\"json_schema\",\"schema\":{}},\"output_config\":{\"format\":{\"type\":\"json_schema\",\"schema\":{}}}"), "not both"),
            (With("\"mcp_servers\":[{\"type\":\"url\",\"url\":\"https://example.com\",\"name\":\"x\"}]"), "mcp_servers"),
            ($$$"""{"model":"{{{new string('m', 300)}}}","max_tokens":8,"messages":{{{user}}}}""", "model"),
            (With("\"tools\":{\"name\":\"f\"}"), "tools"),
            (With("\"tools\":[\"f\"]"), "tools.0"),
            (With("\"tools\":[{\"input_schema\":{\"type\":\"object\"}}]"), "tools.0.name"),
            (With("\"tools\":[{\"name\":\"has space\",\"input_schema\":{}}]"), "tools.0.name"),
            (With($"\"tools\":[{{\"name\":\"{new string('f', 65)}\",\"input_schema\":{{}}}}]"), "tools.0.name"),
            (With("\"tools\":[{\"name\":\"f\"}]"), "tools.0.input_schema"),
            (With("\"tools\":[{\"name\":\"f\",\"input_schema\":\"object\"}]"), "tools.0.input_schema"),
            (With("\"tools\":[{\"name\":\"f\",\"input_schema\":{},\"description\":5}]"), "tools.0.description"),
            (With("\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"web_search\"}]"), "tools.0.type"),
            (With("\"tools\":[{\"name\":\"f\",\"input_schema\":{}},{\"name\":\"f\",\"input_schema\":{}}]"), "unique"),
            (With($"\"tools\":[{string.Join(",", Enumerable.Range(0, 129).Select(i => $"{{\"name\":\"f{i}\",\"input_schema\":{{}}}}"))}]"), "tools"),
            (With("\"tools\":[{\"name\":\"f\",\"input_schema\":{}}],\"tool_choice\":\"any\""), "tool_choice"),
            (With("\"tools\":[{\"name\":\"f\",\"input_schema\":{}}],\"tool_choice\":{\"type\":\"required\"}"), "tool_choice.type"),
            (With("\"tools\":[{\"name\":\"f\",\"input_schema\":{}}],\"tool_choice\":{\"type\":\"tool\"}"), "tool_choice.name"),
            (With("\"tools\":[{\"name\":\"f\",\"input_schema\":{}}],\"tool_choice\":{\"type\":\"tool\",\"name\":\"g\"}"), "tool_choice.name"),
            (With("\"tool_choice\":{\"type\":\"any\"}"), "no tools"),
            (With("\"tools\":[{\"name\":\"f\",\"input_schema\":{}}],\"tool_choice\":{\"type\":\"auto\",\"disable_parallel_tool_use\":\"yes\"}"), "tool_choice.disable_parallel_tool_use"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]}]}""", "messages.0.content.0.type"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_result","tool_use_id":"t1"}]},{"role":"user","content":"x"}]}""", "messages.1.content.0.type"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t9","content":"x"}]}]}""", "messages.0.content.0.tool_use_id"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":"{}"}]},{"role":"user","content":"x"}]}""", "messages.1.content.0.input"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","name":"f","input":{}}]},{"role":"user","content":"x"}]}""", "messages.1.content.0.id"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]},{"role":"user","content":[{"type":"text","text":"a"},{"type":"tool_result","tool_use_id":"t1"}]}]}""", "before any text"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"image"}]}]}]}""", "messages.2.content.0.content.0.type"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":7}]}]}""", "messages.2.content.0.content"),
            ($$$"""{"model":{{{m}}},"max_tokens":8,"tools":[{"name":"f","input_schema":{}}],"tool_choice":{"type":"any"},"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"Sure"}]}""", "prefill"),
        ];
    }
}
