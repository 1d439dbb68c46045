using BenchmarkDotNet.Attributes;
using Microsoft.AspNetCore.Http;
using Potluck.Gateway.Api;

namespace Potluck.Benchmarks;

/// <summary>
/// The gateway's streaming writer: one SSE chunk per generated token (<c>data: {...}\n\n</c>, flushed), as the chat and
/// the text completions endpoints send it, into a response body that discards the bytes.
/// </summary>
[MemoryDiagnoser]
public class SseBenchmarks
{
    private const string Token = " hello";
    private CompletionResponses? _chat;
    private CompletionResponses? _text;

    [GlobalSetup]
    public void Setup()
    {
        _chat = new CompletionResponses(Discarding(), CompletionKind.Chat, "chatcmpl-0123456789abcdef", "potluck/test-model", 1_700_000_000, includeUsage: true);
        _text = new CompletionResponses(Discarding(), CompletionKind.Text, "cmpl-0123456789abcdef", "potluck/test-model", 1_700_000_000, includeUsage: false);
    }

    private static DefaultHttpContext Discarding()
    {
        var context = new DefaultHttpContext();
        context.Response.Body = Stream.Null;
        return context;
    }

    [Benchmark]
    public bool ChatChunk() => Complete(_chat!.WriteTextChunkAsync(0, Token, default, CancellationToken.None));

    [Benchmark]
    public bool TextChunk() => Complete(_text!.WriteTextChunkAsync(0, Token, default, CancellationToken.None));

    private static bool Complete(ValueTask<System.IO.Pipelines.FlushResult> flush) =>
        flush.IsCompletedSuccessfully ? flush.Result.IsCompleted : flush.AsTask().GetAwaiter().GetResult().IsCompleted;
}
