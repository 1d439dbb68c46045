using System.ClientModel;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;

namespace Potluck.Gateway.Tests;

/// <summary>The official OpenAI .NET SDK against a gateway in front of three node processes.</summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class OpenAiSdkTests(PoolFixture pool)
{
    private OpenAIClientOptions Options => new() { Endpoint = new Uri(pool.Gateway.BaseAddress, "v1"), NetworkTimeout = TimeSpan.FromSeconds(60) };

    private ChatClient Chat => new(pool.ModelName, new ApiKeyCredential("unused"), Options);

    [Fact]
    public async Task ChatNonStreamingReturnsTextUsageAndFinishReason()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0f };
        ChatCompletion completion = await Chat.CompleteChatAsync([new SystemChatMessage("Be brief."), new UserChatMessage("Hello there")], options);
        Assert.Equal(ChatMessageRole.Assistant, completion.Role);
        Assert.Equal(pool.ModelName, completion.Model);
        Assert.StartsWith("chatcmpl-", completion.Id);
        Assert.True(completion.FinishReason is ChatFinishReason.Length or ChatFinishReason.Stop);
        Assert.True(completion.Usage.InputTokenCount > 5);
        Assert.InRange(completion.Usage.OutputTokenCount, 1, 12);
        Assert.Equal(completion.Usage.InputTokenCount + completion.Usage.OutputTokenCount, completion.Usage.TotalTokenCount);
        if (completion.FinishReason == ChatFinishReason.Length) Assert.Equal(12, completion.Usage.OutputTokenCount);
    }

    [Fact]
    public async Task ChatStreamingMatchesNonStreamingAndReportsUsage()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 16, Temperature = 0f };
        ChatCompletion whole = await Chat.CompleteChatAsync([new UserChatMessage("Tell me a story")], options);
        var text = new StringBuilder();
        ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        var updates = 0;
        await foreach (var update in Chat.CompleteChatStreamingAsync([new UserChatMessage("Tell me a story")],
                           new ChatCompletionOptions { MaxOutputTokenCount = 16, Temperature = 0f }))
        {
            updates++;
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
            finish ??= update.FinishReason;
            usage ??= update.Usage;
        }
        Assert.True(updates >= 3, $"only {updates} updates");
        Assert.Equal(whole.Content[0].Text, text.ToString());
        Assert.Equal(whole.FinishReason, finish);
        Assert.NotNull(usage); // the SDK always asks for include_usage when streaming
        Assert.Equal(whole.Usage.OutputTokenCount, usage!.OutputTokenCount);
        Assert.Equal(whole.Usage.InputTokenCount, usage.InputTokenCount);
    }

    [Fact]
    public async Task SameSeedGivesSameTextAndOtherSeedsDiffer()
    {
        async Task<string> Run(long seed)
        {
#pragma warning disable OPENAI001 // Seed is marked experimental in the SDK
            var options = new ChatCompletionOptions { MaxOutputTokenCount = 24, Temperature = 1.0f, TopP = 0.95f, Seed = seed };
#pragma warning restore OPENAI001
            ChatCompletion c = await Chat.CompleteChatAsync([new UserChatMessage("Sample something")], options);
            return c.Content[0].Text;
        }
        var a = await Run(42);
        var b = await Run(42);
        Assert.Equal(a, b);
        var others = new HashSet<string> { await Run(1), await Run(2), await Run(3) };
        others.Add(a);
        Assert.True(others.Count > 1, "four seeds all produced the same text");
    }

    [Fact]
    public async Task UnknownModelIsA404FromTheSdk()
    {
        var client = new ChatClient("no-such-model", new ApiKeyCredential("unused"), Options);
        var error = await Assert.ThrowsAsync<ClientResultException>(() => client.CompleteChatAsync([new UserChatMessage("hi")]));
        Assert.Equal(404, error.Status);
        Assert.Contains("model_not_found", error.GetRawResponse()!.Content.ToString());
    }

    /// <summary>The .NET SDK keeps its legacy-completions client internal, so /v1/completions is driven over plain HTTP here (and through the npm SDK in JsSdkTests).</summary>
    [Fact]
    public async Task CompletionsNonStreamingAndStreamingAgree()
    {
        var body = """{"model":"MODEL","prompt":"Once upon a time","max_tokens":10,"temperature":0}""".Replace("MODEL", pool.ModelName);
        using var response = await pool.Http.PostAsync("v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
        Assert.Equal(200, (int)response.StatusCode);
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var root = json.RootElement;
        Assert.Equal("text_completion", root.GetProperty("object").GetString());
        var expected = root.GetProperty("choices")[0].GetProperty("text").GetString()!;
        var finish = root.GetProperty("choices")[0].GetProperty("finish_reason").GetString();
        var completionTokens = root.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
        if (finish == "length") Assert.Equal(10, completionTokens);
        else Assert.Equal("stop", finish);

        var streamBody = body.Replace("\"temperature\":0", "\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true}");
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(streamBody, Encoding.UTF8, "application/json") };
        using var streamed = await pool.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", streamed.Content.Headers.ContentType!.MediaType);
        var text = new StringBuilder();
        var sawDone = false;
        int? usageTokens = null;
        await using var stream = await streamed.Content.ReadAsStreamAsync();
        await foreach (var item in SseParser.Create(stream).EnumerateAsync())
        {
            Assert.False(sawDone, "data after [DONE]");
            if (item.Data == "[DONE]") { sawDone = true; continue; }
            using var chunk = JsonDocument.Parse(item.Data);
            Assert.Equal("text_completion", chunk.RootElement.GetProperty("object").GetString());
            var choices = chunk.RootElement.GetProperty("choices");
            if (choices.GetArrayLength() > 0) text.Append(choices[0].GetProperty("text").GetString());
            if (chunk.RootElement.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
                usageTokens = usage.GetProperty("completion_tokens").GetInt32();
        }
        Assert.True(sawDone);
        Assert.Equal(completionTokens, usageTokens);
        Assert.Equal(expected, text.ToString());
    }
}
