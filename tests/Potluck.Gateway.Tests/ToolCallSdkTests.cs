using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;

namespace Potluck.Gateway.Tests;

/// <summary>
/// Tool calls through the official OpenAI .NET SDK, unchanged, against the shared 3-node pool. The test model's
/// template is ChatML, so the gateway uses its documented generic tool format; its free text is gibberish, so a
/// call is only valid because the grammar forces it.
/// </summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class ToolCallSdkTests(PoolFixture pool)
{
    private ChatClient Chat => new(pool.ModelName, new ApiKeyCredential("unused"),
        new OpenAIClientOptions { Endpoint = new Uri(pool.Gateway.BaseAddress, "v1"), NetworkTimeout = TimeSpan.FromSeconds(60) });

    // Small tools: the test model's context is 512 tokens of about a character each.
    private static readonly ChatTool Weather = ChatTool.CreateFunctionTool("get_weather", "Weather in a city",
        BinaryData.FromString("""{"type":"object","properties":{"city":{"enum":["Paris","Rome","Oslo"]}},"required":["city"]}"""));

    private static readonly ChatTool Time = ChatTool.CreateFunctionTool("get_time", "Time in a zone",
        BinaryData.FromString("""{"type":"object","properties":{"zone":{"type":"integer","minimum":-12,"maximum":14}},"required":["zone"]}"""));

    private static ChatCompletionOptions Options(ChatTool tool, ChatToolChoice choice, int maxTokens = 96)
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = maxTokens, Temperature = 0f, ToolChoice = choice, AllowParallelToolCalls = false };
        options.Tools.Add(tool);
        return options;
    }

    private static void AssertWeatherArguments(string name, BinaryData arguments)
    {
        using var json = JsonDocument.Parse(arguments.ToString());
        var root = json.RootElement;
        if (name == "get_weather")
        {
            Assert.Contains(root.GetProperty("city").GetString(), new[] { "Paris", "Rome", "Oslo" });
            Assert.Single(root.EnumerateObject());
        }
        else
        {
            Assert.Equal("get_time", name);
            Assert.InRange(root.GetProperty("zone").GetInt32(), -12, 14);
            Assert.Single(root.EnumerateObject());
        }
    }

    [Fact]
    public async Task RequiredToolChoiceGivesSchemaValidCallsAndTheRoundTripAnswers()
    {
        var messages = new List<OpenAI.Chat.ChatMessage> { new UserChatMessage("Weather in Paris?") };
        ChatCompletion call = await Chat.CompleteChatAsync(messages, Options(Weather, ChatToolChoice.CreateRequiredChoice()));
        Assert.Equal(ChatFinishReason.ToolCalls, call.FinishReason);
        Assert.Single(call.ToolCalls);
        foreach (var toolCall in call.ToolCalls)
        {
            Assert.StartsWith("call_", toolCall.Id);
            AssertWeatherArguments(toolCall.FunctionName, toolCall.FunctionArguments);
        }

        // Tools are in the prompt: the same conversation without them is shorter.
        ChatCompletion plain = await Chat.CompleteChatAsync(messages, new ChatCompletionOptions { MaxOutputTokenCount = 1, Temperature = 0f });
        Assert.True(call.Usage.InputTokenCount > plain.Usage.InputTokenCount + 100, $"{call.Usage.InputTokenCount} vs {plain.Usage.InputTokenCount}");

        messages.Add(new AssistantChatMessage(call));
        foreach (var toolCall in call.ToolCalls) messages.Add(new ToolChatMessage(toolCall.Id, "21 C"));
        ChatCompletion answer = await Chat.CompleteChatAsync(messages, Options(Weather, ChatToolChoice.CreateNoneChoice(), maxTokens: 12));
        Assert.Empty(answer.ToolCalls);
        Assert.True(answer.FinishReason is ChatFinishReason.Stop or ChatFinishReason.Length);
        Assert.NotEmpty(answer.Content);
        // The call and its result are in the prompt (the tools are not, with tool_choice none).
        Assert.True(answer.Usage.InputTokenCount > plain.Usage.InputTokenCount + 40, $"{answer.Usage.InputTokenCount} vs {plain.Usage.InputTokenCount}");
    }

    [Fact]
    public async Task StreamedToolCallsArriveAsDeltasAndMatchTheWholeResponse()
    {
        List<OpenAI.Chat.ChatMessage> messages = [new UserChatMessage("Time in zone 2?")];
        var options = Options(Time, ChatToolChoice.CreateFunctionChoice("get_time"));
        ChatCompletion whole = await Chat.CompleteChatAsync(messages, options);
        var call = Assert.Single(whole.ToolCalls);
        Assert.Equal("get_time", call.FunctionName);

        var ids = new Dictionary<int, string>();
        var names = new Dictionary<int, string>();
        var arguments = new Dictionary<int, StringBuilder>();
        ChatFinishReason? finish = null;
        await foreach (var update in Chat.CompleteChatStreamingAsync(messages, Options(Time, ChatToolChoice.CreateFunctionChoice("get_time"))))
        {
            foreach (var part in update.ToolCallUpdates)
            {
                if (part.ToolCallId is { } id) ids[part.Index] = id;
                if (part.FunctionName is { } name) names[part.Index] = name;
                if (!arguments.TryGetValue(part.Index, out var text)) arguments[part.Index] = text = new StringBuilder();
                text.Append(part.FunctionArgumentsUpdate?.ToString());
            }
            finish ??= update.FinishReason;
        }
        Assert.Equal(ChatFinishReason.ToolCalls, finish);
        Assert.Equal("get_time", Assert.Single(names).Value);
        Assert.StartsWith("call_", ids[0]);
        Assert.Equal(call.FunctionArguments.ToString(), arguments[0].ToString());
        AssertWeatherArguments("get_time", BinaryData.FromString(arguments[0].ToString()));

        // Round trip, streamed: the answer after the tool result is text.
        messages.Add(new AssistantChatMessage([ChatToolCall.CreateFunctionToolCall(ids[0], "get_time", BinaryData.FromString(arguments[0].ToString()))]));
        messages.Add(new ToolChatMessage(ids[0], "14:05"));
        var answer = new StringBuilder();
        await foreach (var update in Chat.CompleteChatStreamingAsync(messages, new ChatCompletionOptions { MaxOutputTokenCount = 8, Temperature = 0f }))
            foreach (var part in update.ContentUpdate) answer.Append(part.Text);
        Assert.NotEqual("", answer.ToString());
    }

    [Theory]
    [InlineData("""{"tool_choice":{"type":"function","function":{"name":"nope"}}}""", "tool_choice.function.name")]
    [InlineData("""{"tool_choice":"sometimes"}""", "tool_choice")]
    [InlineData("""{"tools":[{"type":"retrieval"}]}""", "tools[0].type")]
    [InlineData("""{"tools":[{"type":"function","function":{"name":"bad name!"}}]}""", "tools[0].function.name")]
    [InlineData("""{"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"x":{"allOf":[{"type":"string"}]}}}}}],"tool_choice":"required"}""", "tools[0].function.parameters")]
    [InlineData("""{"tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"f"}}]}""", "tools")]
    [InlineData("""{"tool_choice":"required"}""", "tool_choice")]
    [InlineData("""{"messages":[{"role":"assistant","tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":"{not json"}}]}]}""", "messages[0].tool_calls[0].function.arguments")]
    [InlineData("""{"messages":[{"role":"tool","content":"r"}]}""", "messages[0].tool_call_id")]
    [InlineData("""{"functions":[{"name":"f"}],"function_call":{"name":"g"}}""", "function_call.name")]
    public async Task BadToolFieldsAreA400NamingTheField(string fields, string param)
    {
        using var body = JsonDocument.Parse(fields);
        var request = new Dictionary<string, object?>
        {
            ["model"] = pool.ModelName,
            ["messages"] = JsonDocument.Parse("""[{"role":"user","content":"hi"}]""").RootElement,
            ["max_tokens"] = 4,
        };
        foreach (var p in body.RootElement.EnumerateObject()) request[p.Name] = p.Value.Clone();
        if (!request.ContainsKey("tools") && !request.ContainsKey("functions") && param.StartsWith("tool_choice.function", StringComparison.Ordinal))
            request["tools"] = JsonDocument.Parse("""[{"type":"function","function":{"name":"f"}}]""").RootElement;
        using var response = await pool.Http.PostAsync("/v1/chat/completions",
            new StringContent(JsonSerializer.Serialize(request), Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{(int)response.StatusCode}: {text}");
        using var error = JsonDocument.Parse(text);
        Assert.Equal(param, error.RootElement.GetProperty("error").GetProperty("param").GetString());
    }
}
