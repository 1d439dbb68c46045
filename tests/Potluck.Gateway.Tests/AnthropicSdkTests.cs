using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using Anthropic;
using Anthropic.Exceptions;
using Anthropic.Models.Messages;
using OpenAI;
using OpenAI.Chat;

namespace Potluck.Gateway.Tests;

/// <summary>The official Anthropic .NET SDK, unchanged, against /v1/messages of a gateway in front of three node processes.</summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class AnthropicSdkTests(PoolFixture pool)
{
    // ResponseValidation: the SDK checks every response and event against its schema, so a wrong shape fails here.
    private AnthropicClient Client => new()
    {
        ApiKey = "unused",
        BaseUrl = pool.Gateway.BaseAddress.ToString().TrimEnd('/'),
        MaxRetries = 0,
        Timeout = TimeSpan.FromSeconds(60),
        ResponseValidation = true,
    };

    /// <summary>
    /// Greedy parameters. This SDK version has no temperature property (Anthropic's newest models take none), so
    /// "temperature": 0 goes in as a raw body field, the SDK's own way to send a field it does not model.
    /// </summary>
    internal static MessageCreateParams Greedy(string model, long maxTokens, IReadOnlyList<MessageParam> messages) =>
        new(new Dictionary<string, JsonElement>(), new Dictionary<string, JsonElement>(),
            new Dictionary<string, JsonElement> { ["temperature"] = JsonSerializer.SerializeToElement(0) })
        {
            Model = model,
            MaxTokens = maxTokens,
            Messages = messages,
        };

    private MessageCreateParams Params(string user, long maxTokens, string? system = null, IReadOnlyList<string>? stop = null)
    {
        var parameters = Greedy(pool.ModelName, maxTokens, [new UserMessageParam(user)]);
        if (system is not null) parameters = parameters with { System = system };
        if (stop is not null) parameters = parameters with { StopSequences = stop };
        return parameters;
    }

    private static string TextOf(Message message) =>
        string.Concat(message.Content.Select(block => block.TryPickText(out var text) ? text.Text : ""));

    [Fact]
    public async Task MessageReturnsTextUsageAndStopReason()
    {
        var message = await Client.Messages.Create(Params("Hello there", 12, system: "Be brief."));
        Assert.StartsWith("msg_", message.ID);
        Assert.Equal(pool.ModelName, message.Model.Raw());
        Assert.Equal("assistant", message.Role.GetString());
        Assert.Equal("message", message.Type.GetString());
        Assert.True(message.Usage.InputTokens > 5);
        Assert.InRange(message.Usage.OutputTokens, 1, 12);
        var stop = message.StopReason!.Raw();
        Assert.True(stop is "max_tokens" or "end_turn", stop);
        if (stop == "max_tokens") Assert.Equal(12, message.Usage.OutputTokens);
        Assert.Null(message.StopSequence);
        Assert.NotEmpty(TextOf(message));
    }

    [Fact]
    public async Task StreamingEventsComeInOrderAndAddUpToTheMessage()
    {
        var whole = await Client.Messages.Create(Params("Tell me a story", 16));
        var text = new StringBuilder();
        var kinds = new List<string>();
        string? stopReason = null;
        long? outputTokens = null, inputTokens = null;
        await foreach (var update in Client.Messages.CreateStreaming(Params("Tell me a story", 16)))
        {
            if (update.TryPickStart(out var start))
            {
                kinds.Add("message_start");
                Assert.StartsWith("msg_", start.Message.ID);
                Assert.Empty(start.Message.Content);
                inputTokens = start.Message.Usage.InputTokens;
            }
            else if (update.TryPickContentBlockStart(out var blockStart))
            {
                kinds.Add("content_block_start");
                Assert.Equal(0, blockStart.Index);
            }
            else if (update.TryPickContentBlockDelta(out var delta))
            {
                if (kinds[^1] != "content_block_delta") kinds.Add("content_block_delta");
                Assert.True(delta.Delta.TryPickText(out var piece));
                text.Append(piece!.Text);
            }
            else if (update.TryPickContentBlockStop(out _)) kinds.Add("content_block_stop");
            else if (update.TryPickDelta(out var messageDelta))
            {
                kinds.Add("message_delta");
                stopReason = messageDelta.Delta.StopReason?.Raw();
                outputTokens = messageDelta.Usage.OutputTokens;
            }
            else if (update.TryPickStop(out _)) kinds.Add("message_stop");
        }
        Assert.Equal(["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"], kinds);
        Assert.Equal(TextOf(whole), text.ToString());
        Assert.Equal(whole.StopReason!.Raw(), stopReason);
        Assert.Equal(whole.Usage.OutputTokens, outputTokens);
        Assert.Equal(whole.Usage.InputTokens, inputTokens);
    }

    [Fact]
    public async Task GreedyTextEqualsTheOpenAiChatEndpointsForTheSameConversation()
    {
        var message = await Client.Messages.Create(Greedy(pool.ModelName, 20,
            [new UserMessageParam("What is a pool?"), new AssistantMessageParam("A group of nodes."), new UserMessageParam("Say more")]) with
        {
            // A system prompt as text blocks: joined, it is the OpenAI request's system message.
            System = new List<TextBlockParam> { new("You are a helpful "), new("assistant.") },
        });
        var chat = new ChatClient(pool.ModelName, new ApiKeyCredential("unused"),
            new OpenAIClientOptions { Endpoint = new Uri(pool.Gateway.BaseAddress, "v1"), NetworkTimeout = TimeSpan.FromSeconds(60) });
        ChatCompletion completion = await chat.CompleteChatAsync(
            [new SystemChatMessage("You are a helpful assistant."), new UserChatMessage("What is a pool?"), new AssistantChatMessage("A group of nodes."), new UserChatMessage("Say more")],
            new ChatCompletionOptions { MaxOutputTokenCount = 20, Temperature = 0f });
        Assert.Equal(completion.Content[0].Text, TextOf(message));
        Assert.Equal(completion.Usage.InputTokenCount, message.Usage.InputTokens);
        Assert.Equal(completion.Usage.OutputTokenCount, message.Usage.OutputTokens);
        Assert.Equal(completion.FinishReason == ChatFinishReason.Length ? "max_tokens" : "end_turn", message.StopReason!.Raw());
    }

    [Fact]
    public async Task StopSequenceEndsTheAnswerAndIsNamed()
    {
        var free = TextOf(await Client.Messages.Create(Params("Count with me", 24)));
        // A stop sequence taken from the greedy answer itself, so the same greedy run must stop there.
        var stop = Enumerable.Range(4, Math.Max(0, free.Length - 8)).Select(i => free.Substring(i, 3)).FirstOrDefault(s => !string.IsNullOrWhiteSpace(s));
        Assert.True(stop is not null, $"the answer '{free}' is too short to cut");
        var cut = await Client.Messages.Create(Params("Count with me", 24, stop: [stop!]));
        Assert.Equal("stop_sequence", cut.StopReason!.Raw());
        Assert.Equal(stop, cut.StopSequence);
        Assert.Equal(free[..free.IndexOf(stop!, StringComparison.Ordinal)], TextOf(cut));

        var streamed = new StringBuilder();
        string? streamedStop = null;
        await foreach (var update in Client.Messages.CreateStreaming(Params("Count with me", 24, stop: [stop!])))
        {
            if (update.TryPickContentBlockDelta(out var delta) && delta.Delta.TryPickText(out var piece)) streamed.Append(piece.Text);
            if (update.TryPickDelta(out var messageDelta)) streamedStop = messageDelta.Delta.StopSequence;
        }
        Assert.Equal(TextOf(cut), streamed.ToString());
        Assert.Equal(stop, streamedStop);
    }

    [Fact]
    public async Task PrefillIsContinuedAsTheChatTemplateThenThePrefillTokensWould()
    {
        var message = await Client.Messages.Create(Greedy(pool.ModelName, 10, [new UserMessageParam("Name a colour"), new AssistantMessageParam("My answer is")]));
        // The oracle: the same tokens (the conversation with the assistant opener, then the prefill as plain text)
        // sent as a token prompt to /v1/completions, greedy.
        var model = (Head.ModelFrontEnd)pool.Gateway.Services.GetService(typeof(Head.ModelFrontEnd))!;
        var tokenizer = model.Tokenizer;
        int[] prompt = [.. tokenizer.EncodeChat([("user", "Name a colour")], addAssistantPrompt: true, addBos: tokenizer.AddBosByDefault),
            .. tokenizer.Encode("My answer is", addBos: false, parseSpecial: false)];
        using var response = await pool.Http.PostAsync("v1/completions", Json(new { model = pool.ModelName, prompt, max_tokens = 10, temperature = 0 }));
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, body);
        using var completion = JsonDocument.Parse(body);
        Assert.Equal(completion.RootElement.GetProperty("choices")[0].GetProperty("text").GetString(), TextOf(message));
        Assert.Equal(prompt.Length, message.Usage.InputTokens);
    }

    // Small: the test model's context is 512 tokens, its tokens are about a character each, and the tool's
    // description and schema are prompt text (the generic tool format, as the test model's template is ChatML).
    private const string WeatherSchema = """{"type":"object","properties":{"city":{"enum":["Paris","Oslo"]}},"required":["city"],"additionalProperties":false}""";

    private static Tool WeatherTool => new()
    {
        Name = "weather",
        Description = "Weather",
        InputSchema = new InputSchema(JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(WeatherSchema)!),
    };

    private static void AssertWeatherInput(IReadOnlyDictionary<string, JsonElement> input)
    {
        // The random model's free text is gibberish; the grammar still makes the input match the schema.
        Assert.Contains(input["city"].GetString(), new[] { "Paris", "Oslo" });
        Assert.Single(input);
    }

    [Fact]
    public async Task ToolUseRoundTripStreamedAndNot()
    {
        List<MessageParam> conversation = [new UserMessageParam("Weather in Paris?")];
        var ask = Greedy(pool.ModelName, 100, conversation) with { Tools = [WeatherTool], ToolChoice = new ToolChoiceAny() };
        var called = await Client.Messages.Create(ask);
        Assert.True(called.StopReason!.Raw() == "tool_use", $"{called.StopReason.Raw()} after {called.Usage.OutputTokens} tokens: {TextOf(called)}");
        var use = called.Content.Select(b => b.TryPickToolUse(out var u) ? u : null).Single(u => u is not null)!;
        Assert.Equal("weather", use.Name);
        Assert.False(string.IsNullOrEmpty(use.ID));
        AssertWeatherInput(use.Input);

        // Streamed: the same call, its input as input_json_delta pieces that add up to the same JSON.
        var json = new StringBuilder();
        string? streamedName = null, streamedStop = null;
        await foreach (var update in Client.Messages.CreateStreaming(ask))
        {
            if (update.TryPickContentBlockStart(out var start) && start.ContentBlock.TryPickToolUse(out var block)) streamedName = block.Name;
            if (update.TryPickContentBlockDelta(out var delta) && delta.Delta.TryPickInputJson(out var piece)) json.Append(piece.PartialJson);
            if (update.TryPickDelta(out var messageDelta)) streamedStop = messageDelta.Delta.StopReason?.Raw();
        }
        Assert.Equal("weather", streamedName);
        Assert.Equal("tool_use", streamedStop);
        Assert.Equal(JsonSerializer.Serialize(use.Input), JsonSerializer.Serialize(JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(json.ToString())));

        // The tool's result goes back; the model answers in text. Without the tool definitions this time: they do not
        // fit twice in the test model's 512-token context, and the history alone still renders the call and its result.
        conversation.Add(new AssistantMessageParam(new List<ContentBlockParam>
        {
            new ToolUseBlockParam { ID = use.ID, Name = use.Name, Input = use.Input },
        }));
        conversation.Add(new UserMessageParam(new List<ContentBlockParam> { new ToolResultBlockParam(use.ID) { Content = "18 C" } }));
        var answer = await Client.Messages.Create(Greedy(pool.ModelName, 12, conversation));
        var question = await Client.Messages.Create(Greedy(pool.ModelName, 1, [conversation[0]]));
        Assert.True(answer.Usage.InputTokens > question.Usage.InputTokens + 40, "the tool call and its result are in the prompt");
        Assert.True(answer.StopReason!.Raw() is "end_turn" or "max_tokens", answer.StopReason.Raw());
        var streamedAnswer = new StringBuilder();
        await foreach (var update in Client.Messages.CreateStreaming(Greedy(pool.ModelName, 12, conversation)))
            if (update.TryPickContentBlockDelta(out var delta) && delta.Delta.TryPickText(out var piece)) streamedAnswer.Append(piece.Text);
        Assert.Equal(TextOf(answer), streamedAnswer.ToString());
    }

    [Fact]
    public async Task ToolsReachThePromptAsForChatCompletions()
    {
        // The same tools and tool history through both APIs render the same prompt, and greedy gives the same call.
        var message = await Client.Messages.Create(Greedy(pool.ModelName, 100, [new UserMessageParam("Weather in Oslo?")]) with
        {
            Tools = [WeatherTool],
            ToolChoice = new ToolChoiceTool("weather"),
        });
        var body = JsonSerializer.Serialize(new
        {
            model = pool.ModelName,
            max_tokens = 100,
            temperature = 0,
            messages = new[] { new { role = "user", content = "Weather in Oslo?" } },
            tools = new[] { new { type = "function", function = new { name = "weather", description = "Weather", parameters = JsonDocument.Parse(WeatherSchema).RootElement } } },
            tool_choice = new { type = "function", function = new { name = "weather" } },
        });
        using var response = await pool.Http.PostAsync("v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, text);
        using var chat = JsonDocument.Parse(text);
        Assert.Equal(chat.RootElement.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), message.Usage.InputTokens);
        Assert.True(chat.RootElement.GetProperty("choices")[0].GetProperty("message").TryGetProperty("tool_calls", out var calls), text);
        var call = calls[0].GetProperty("function");
        var use = message.Content.Select(b => b.TryPickToolUse(out var u) ? u : null).Single(u => u is not null)!;
        Assert.Equal(call.GetProperty("name").GetString(), use.Name);
        Assert.Equal(JsonSerializer.Serialize(JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(call.GetProperty("arguments").GetString()!)),
            JsonSerializer.Serialize(use.Input));
    }

    [Fact]
    public async Task StructuredOutputFromOutputConfigValidatesAgainstTheSchema()
    {
        // A root enum: nothing but the grammar decides the text (an object would let the random model pad it with whitespace).
        const string schemaText = """{"enum":["sunny","rainy",{"temperature":21}]}""";
        var schema = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(schemaText)!;
        var message = await Client.Messages.Create(Greedy(pool.ModelName, 40, [new UserMessageParam("Weather?")]) with
        {
            OutputConfig = new OutputConfig { Format = new JsonOutputFormat { Schema = schema } },
        });
        // The random model's text is gibberish, yet the grammar makes it valid JSON matching the schema.
        Assert.True(message.StopReason!.Raw() == "end_turn", $"{message.StopReason.Raw()} after {message.Usage.OutputTokens} tokens: {TextOf(message)}");
        using var answer = JsonDocument.Parse(TextOf(message));
        var result = global::Json.Schema.JsonSchema.FromText(schemaText).Evaluate(answer.RootElement);
        Assert.True(result.IsValid, TextOf(message));
    }

    [Fact]
    public async Task CountTokensGivesTheInputTokensOfTheSameRequest()
    {
        List<MessageParam> conversation = [new UserMessageParam("Weather in Paris?"), new AssistantMessageParam("It is")];
        var counted = await Client.Messages.CountTokens(new MessageCountTokensParams { Model = pool.ModelName, Messages = conversation, Tools = [WeatherTool] });
        var message = await Client.Messages.Create(Greedy(pool.ModelName, 1, conversation) with { Tools = [WeatherTool] });
        Assert.Equal(message.Usage.InputTokens, counted.InputTokens);
        var plain = await Client.Messages.CountTokens(new MessageCountTokensParams { Model = pool.ModelName, Messages = conversation });
        Assert.True(plain.InputTokens + 40 < counted.InputTokens, "the tools are counted");
        await Assert.ThrowsAsync<AnthropicNotFoundException>(() => Client.Messages.CountTokens(new MessageCountTokensParams { Model = "claude-none", Messages = conversation }));
    }

    [Fact]
    public async Task SdkErrorsAreTypedFromAnthropicsErrorShape()
    {
        var notFound = await Assert.ThrowsAsync<AnthropicNotFoundException>(() => Client.Messages.Create(new MessageCreateParams
        {
            Model = "claude-none",
            MaxTokens = 4,
            Messages = [new UserMessageParam("hi")],
        }));
        Assert.Contains("claude-none", notFound.ResponseBody);
        var tooLong = await Assert.ThrowsAsync<AnthropicBadRequestException>(() => Client.Messages.Create(Params("hi", 10_000_000)));
        using var error = JsonDocument.Parse(tooLong.ResponseBody);
        Assert.Equal("error", error.RootElement.GetProperty("type").GetString());
        Assert.Equal("invalid_request_error", error.RootElement.GetProperty("error").GetProperty("type").GetString());
        Assert.Contains("max_tokens", error.RootElement.GetProperty("error").GetProperty("message").GetString());
    }

    /// <summary>Every hostile body of the parser's data set, over HTTP: a 4xx in Anthropic's shape naming the field, never a 500.</summary>
    [Fact]
    public async Task HostileBodiesGetAnthropicErrorsOverHttp()
    {
        var cases = AnthropicRequestTests.HostileBodies(pool.ModelName).ToList();
        Assert.True(cases.Count >= 20, $"only {cases.Count} cases");
        foreach (var (body, field) in cases)
        {
            using var response = await pool.Http.PostAsync("v1/messages", new StringContent(body, Encoding.UTF8, "application/json"));
            var text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{(int)response.StatusCode} for {body}: {text}");
            AssertAnthropicError(text, "invalid_request_error", field);
        }
    }

    [Theory]
    // Valid to the parser, refused by the endpoint: a tool schema the grammar cannot express, a budget over the context.
    [InlineData("""{"tools":[{"name":"f","input_schema":{"type":"frobnicate"}}],"tool_choice":{"type":"any"}}""", "tools.0.input_schema")]
    [InlineData("""{"tools":[{"name":"f","input_schema":{"type":"object"}},{"name":"g","input_schema":{"type":"object","properties":{"a":{"$ref":"#/$defs/none"}}}}]}""", "tools.1.input_schema")]
    [InlineData("""{"max_tokens":100000}""", "max_tokens")]
    public async Task RequestsTheEndpointRefusesGetAnthropicErrors(string fields, string mentions)
    {
        var body = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(fields)!;
        body.TryAdd("max_tokens", JsonSerializer.SerializeToElement(8));
        body["model"] = JsonSerializer.SerializeToElement(pool.ModelName);
        body["messages"] = JsonSerializer.SerializeToElement(new[] { new { role = "user", content = "hi" } });
        using var response = await pool.Http.PostAsync("v1/messages", Json(body));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{(int)response.StatusCode}: {text}");
        AssertAnthropicError(text, "invalid_request_error", mentions);
    }

    [Fact]
    public async Task RoutingAndMediaErrorsOnMessagesAreInAnthropicsShapeToo()
    {
        using (var get = await pool.Http.GetAsync("v1/messages"))
        {
            Assert.Equal(HttpStatusCode.MethodNotAllowed, get.StatusCode);
            AssertAnthropicError(await get.Content.ReadAsStringAsync(), "invalid_request_error", "GET");
        }
        using (var form = await pool.Http.PostAsync("v1/messages", new StringContent("model=x", Encoding.UTF8, "text/plain")))
        {
            Assert.Equal(HttpStatusCode.UnsupportedMediaType, form.StatusCode);
            AssertAnthropicError(await form.Content.ReadAsStringAsync(), "invalid_request_error", "Content-Type");
        }
        var huge = $$"""{"model":"{{pool.ModelName}}","max_tokens":4,"messages":[{"role":"user","content":"{{new string('a', 70_000)}}"}]}""";
        using (var large = await pool.Http.PostAsync("v1/messages", new StringContent(huge, Encoding.UTF8, "application/json")))
        {
            Assert.Equal(HttpStatusCode.RequestEntityTooLarge, large.StatusCode);
            AssertAnthropicError(await large.Content.ReadAsStringAsync(), "request_too_large", "limit");
        }
        // The OpenAI endpoints keep OpenAI's shape.
        using var openAi = await pool.Http.PostAsync("v1/chat/completions", new StringContent("{}", Encoding.UTF8, "application/json"));
        using var json = JsonDocument.Parse(await openAi.Content.ReadAsStringAsync());
        Assert.Equal("invalid_request_error", json.RootElement.GetProperty("error").GetProperty("type").GetString());
        Assert.False(json.RootElement.TryGetProperty("type", out _));
    }

    internal static void AssertAnthropicError(string body, string type, string mentions)
    {
        using var json = JsonDocument.Parse(body);
        var root = json.RootElement;
        Assert.Equal("error", root.GetProperty("type").GetString());
        var error = root.GetProperty("error");
        Assert.Equal(type, error.GetProperty("type").GetString());
        Assert.Contains(mentions, error.GetProperty("message").GetString());
    }

    private static StringContent Json(object value) => new(JsonSerializer.Serialize(value), Encoding.UTF8, "application/json");
}
