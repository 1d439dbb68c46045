using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Potluck.Gateway.Api;
using Potluck.Gateway.Chat;
using Potluck.Inference.Models;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Tests.Chat;

/// <summary>
/// The response bodies for a reasoning, tool-calling model (Qwen3's template on a generated model): SSE chunks
/// with delta.reasoning_content, delta.content and delta.tool_calls, and the whole message, as OpenAI and llama.cpp write them.
/// </summary>
public sealed class ChatOutputStreamTests : IDisposable
{
    private readonly Tokenizer _qwen = Tokenizer.Load(TestModels.Get(
        new TestModelSpec { LayerCount = 1, ChatTemplate = ChatRendererTests.Template("Qwen-Qwen3-0.6B.jinja") }, Potluck.Inference.Gguf.GgmlType.Q8_0));

    public void Dispose() => _qwen.Dispose();

    private const string Output = "<think>\nNeed weather.\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    private CompletionRequest Request() => CompletionRequestParser.Parse(Encoding.UTF8.GetBytes(
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"w?\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}]}"), CompletionKind.Chat);

    [Fact]
    public async Task StreamedChunksCarryReasoningContentAndWholeToolCalls()
    {
        var context = new DefaultHttpContext();
        var body = new MemoryStream();
        context.Response.Body = body;
        var responses = new CompletionResponses(context, CompletionKind.Chat, "chatcmpl-1", "m", 1, includeUsage: false);
        var chat = ChatOutput.For(Request(), _qwen)!;
        Assert.True(chat.RendersSpecialTokens);
        foreach (var c in Output) await chat.WriteAsync(responses, chat.Push(c.ToString()), CancellationToken.None);
        await chat.WriteAsync(responses, chat.Finish(), CancellationToken.None);
        await responses.WriteFinishChunkAsync(chat.FinishReason("stop"), CancellationToken.None);
        await context.Response.BodyWriter.FlushAsync();

        var reasoning = new StringBuilder();
        var content = new StringBuilder();
        var calls = new List<JsonElement>();
        string? finish = null;
        foreach (var line in Encoding.UTF8.GetString(body.ToArray()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries))
        {
            Assert.StartsWith("data: ", line);
            using var chunk = JsonDocument.Parse(line["data: ".Length..]);
            var choice = chunk.RootElement.GetProperty("choices")[0];
            var delta = choice.GetProperty("delta");
            if (delta.TryGetProperty("reasoning_content", out var r)) reasoning.Append(r.GetString());
            if (delta.TryGetProperty("content", out var t)) content.Append(t.GetString());
            if (delta.TryGetProperty("tool_calls", out var tc)) calls.AddRange(tc.EnumerateArray().Select(e => e.Clone()));
            if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = choice.GetProperty("finish_reason").GetString();
        }
        Assert.Equal("Need weather.", reasoning.ToString());
        Assert.Equal("Checking.\n", content.ToString());
        var call = Assert.Single(calls);
        Assert.Equal(0, call.GetProperty("index").GetInt32());
        Assert.StartsWith("call_", call.GetProperty("id").GetString());
        Assert.Equal("function", call.GetProperty("type").GetString());
        Assert.Equal("get_weather", call.GetProperty("function").GetProperty("name").GetString());
        Assert.Equal("{\"city\":\"Paris\"}", call.GetProperty("function").GetProperty("arguments").GetString());
        Assert.Equal("tool_calls", finish);
    }

    [Fact]
    public async Task TheWholeMessageHasReasoningContentAndToolCalls()
    {
        var context = new DefaultHttpContext();
        var body = new MemoryStream();
        context.Response.Body = body;
        var chat = ChatOutput.For(Request(), _qwen)!;
        chat.Push(Output);
        chat.Finish();
        var responses = new CompletionResponses(context, CompletionKind.Chat, "chatcmpl-1", "m", 1, includeUsage: false);
        await responses.WriteCompleteAsync(chat.Content, chat.FinishReason("stop"), 5, 9, CancellationToken.None, chat.Calls, chat.Reasoning);
        await context.Response.BodyWriter.FlushAsync();
        using var json = JsonDocument.Parse(body.ToArray());
        var choice = json.RootElement.GetProperty("choices")[0];
        Assert.Equal("tool_calls", choice.GetProperty("finish_reason").GetString());
        var message = choice.GetProperty("message");
        Assert.Equal("Checking.\n", message.GetProperty("content").GetString());
        Assert.Equal("Need weather.", message.GetProperty("reasoning_content").GetString());
        Assert.Equal("get_weather", message.GetProperty("tool_calls")[0].GetProperty("function").GetProperty("name").GetString());

        // Without tools the same output is reasoning and content, and a cut-off call is not a tool_calls finish.
        var plain = ChatOutput.For(CompletionRequestParser.Parse(Encoding.UTF8.GetBytes("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"w?\"}]}"), CompletionKind.Chat), _qwen)!;
        plain.Push(Output);
        plain.Finish();
        Assert.Equal("Need weather.", plain.Reasoning);
        Assert.StartsWith("Checking.\n<tool_call>", plain.Content);
        Assert.Empty(plain.Calls);
        Assert.Equal("length", chat.FinishReason("length"));
    }
}
