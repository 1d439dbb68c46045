using System.Text;
using System.Text.Json;
using Potluck.Gateway.Api;
using Potluck.Gateway.Api.Anthropic;

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
            ($$"""{"max_tokens":8,"messages":{{user}}}""", "model"),
            ($$"""{"model":5,"max_tokens":8,"messages":{{user}}}""", "model"),
            ($$"""{"model":{{m}},"messages":{{user}}}""", "max_tokens"),
            ($$"""{"model":{{m}},"max_tokens":0,"messages":{{user}}}""", "max_tokens"),
            ($$"""{"model":{{m}},"max_tokens":"8","messages":{{user}}}""", "max_tokens"),
            ($$"""{"model":{{m}},"max_tokens":2.5,"messages":{{user}}}""", "max_tokens"),
            ($$"""{"model":{{m}},"max_tokens":8}""", "messages"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[]}""", "messages"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":{"role":"user"} }""", "messages"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":["hi"]}""", "messages.0"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"content":"hi"}]}""", "messages.0.role"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"tool","content":"hi"}]}""", "messages.0.role"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"user"}]}""", "messages.0.content"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"user","content":42}]}""", "messages.0.content"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"user","content":[{"text":"hi"}]}]}""", "messages.0.content.0.type"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"user","content":[{"type":"text"}]}]}""", "messages.0.content.0.text"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA=="} }]}]}""", "messages.0.content.0.type"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"user","content":[{"type":"hologram"}]}]}""", "hologram"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"trailing "}]}""", "trailing whitespace"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"assistant","content":"alone"}]}""", "user turn"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"user","content":"\ud800"}]}""", "messages.0.content"),
            ($$"""{"model":{{m}},"max_tokens":8,"messages":[{"role":"system","content":[{"type":"document"}]}]}""", "messages.0.content.0.type"),
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
            (With("\"mcp_servers\":[{\"type\":\"url\",\"url\":\"https://example.com\",\"name\":\"x\"}]"), "mcp_servers"),
            ($$"""{"model":"{{new string('m', 300)}}","max_tokens":8,"messages":{{user}}}""", "model"),
        ];
    }
}
