using System.Text;
using Potluck.Cli.Chat;

namespace Potluck.Cli.Tests;

/// <summary>The SSE framing and OpenAI chunk parsing `potluck chat` relies on, on literal wire text.</summary>
public sealed class ChatStreamTests
{
    private static async Task<List<string>> ReadAll(string wire)
    {
        using var stream = new MemoryStream(Encoding.UTF8.GetBytes(wire));
        var events = new List<string>();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await foreach (var data in ServerSentEvents.ReadDataAsync(stream, timeout.Token)) events.Add(data);
        return events;
    }

    [Fact]
    public async Task EventsAreSplitOnBlankLinesAndCommentsSkipped()
    {
        var events = await ReadAll(": keep-alive\n\ndata: {\"a\":1}\n\ndata:{\"b\":2}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\ndata: [DONE]");
        Assert.Equal(["{\"a\":1}", "{\"b\":2}", "line1\nline2", "[DONE]"], events);
    }

    [Fact]
    public void ChunksYieldDeltaContentAndFinishReason()
    {
        Assert.Equal(("Hel", null), ChatClient.ParseChunk("""{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"""));
        Assert.Equal((null, null), ChatClient.ParseChunk("""{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"""));
        Assert.Equal((null, "length"), ChatClient.ParseChunk("""{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"""));
        Assert.Equal((null, null), ChatClient.ParseChunk("""{"choices":[],"usage":{"prompt_tokens":3}}"""));
    }

    [Fact]
    public void ErrorEventsBecomeFailures()
    {
        var error = Assert.Throws<CliFailureException>(() => ChatClient.ParseChunk("""{"error":{"message":"context overflow","type":"invalid_request_error"}}"""));
        Assert.Contains("context overflow", error.Message);
    }
}
