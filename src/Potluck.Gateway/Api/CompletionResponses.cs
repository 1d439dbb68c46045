using System.Buffers;
using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Potluck.Gateway.Api;

/// <summary>
/// Writes OpenAI response bodies and SSE chunks straight into the response pipe with one reused
/// Utf8JsonWriter, so streaming allocates nothing per chunk beyond the token's text.
/// </summary>
internal sealed class CompletionResponses(HttpContext context, CompletionKind kind, string id, string model, long created, bool includeUsage)
{
    private static readonly byte[] DataPrefix = "data: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();
    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();
    private readonly Utf8JsonWriter _json = new(context.Response.BodyWriter, new JsonWriterOptions { SkipValidation = true });

    private string ObjectName => kind == CompletionKind.Chat ? "chat.completion" : "text_completion";

    public Task StartStreamAsync() => StartEventStreamAsync(context);

    /// <summary>Starts a server-sent-events answer (both APIs stream this way): no caching, no proxy buffering.</summary>
    internal static async Task StartEventStreamAsync(HttpContext context)
    {
        var response = context.Response;
        response.StatusCode = 200;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        await response.StartAsync(context.RequestAborted);
    }

    private static readonly byte[] QueuedComment = ": queued\n\n"u8.ToArray();

    /// <summary>
    /// Keeps a streaming request that waits for a generation slot alive: starts the event stream (once; then no
    /// x-potluck-* header can be added) and writes an SSE comment, which every SSE client skips.
    /// </summary>
    internal static async Task WriteQueuedCommentAsync(HttpContext context, CancellationToken ct)
    {
        if (!context.Response.HasStarted) await StartEventStreamAsync(context);
        context.Response.BodyWriter.Write(QueuedComment);
        await context.Response.BodyWriter.FlushAsync(ct);
    }

    /// <summary>The first chat chunk: the assistant role with empty content, as OpenAI sends it.</summary>
    public ValueTask<System.IO.Pipelines.FlushResult> WriteRoleChunkAsync(int index, CancellationToken ct)
    {
        BeginChunk(index);
        _json.WriteStartObject("delta");
        _json.WriteString("role", "assistant");
        _json.WriteString("content", "");
        _json.WriteEndObject();
        return EndChunkAsync(finishReason: null, default, ct);
    }

    public ValueTask<System.IO.Pipelines.FlushResult> WriteTextChunkAsync(int index, string text, LogprobsSlice logprobs, CancellationToken ct)
    {
        BeginChunk(index);
        if (kind == CompletionKind.Chat)
        {
            _json.WriteStartObject("delta");
            _json.WriteString("content", text);
            _json.WriteEndObject();
        }
        else
        {
            _json.WriteString("text", text);
        }
        return EndChunkAsync(finishReason: null, logprobs, ct);
    }

    /// <summary>Reasoning text (llama.cpp's delta.reasoning_content).</summary>
    public ValueTask<System.IO.Pipelines.FlushResult> WriteReasoningChunkAsync(int index, string text, CancellationToken ct)
    {
        BeginChunk(index);
        _json.WriteStartObject("delta");
        _json.WriteString("reasoning_content", text);
        _json.WriteEndObject();
        return EndChunkAsync(finishReason: null, default, ct);
    }

    /// <summary>One whole tool call as a delta.tool_calls entry (id, name and all arguments in one chunk).</summary>
    public ValueTask<System.IO.Pipelines.FlushResult> WriteToolCallChunkAsync(int index, int callIndex, Chat.ToolCall call, CancellationToken ct)
    {
        BeginChunk(index);
        _json.WriteStartObject("delta");
        _json.WriteStartArray("tool_calls");
        _json.WriteStartObject();
        _json.WriteNumber("index", callIndex);
        WriteToolCallFields(call);
        _json.WriteEndObject();
        _json.WriteEndArray();
        _json.WriteEndObject();
        return EndChunkAsync(finishReason: null, default, ct);
    }

    private void WriteToolCallFields(Chat.ToolCall call)
    {
        _json.WriteString("id", call.Id);
        _json.WriteString("type", "function");
        _json.WriteStartObject("function");
        _json.WriteString("name", call.Name);
        _json.WriteString("arguments", call.ArgumentsJson);
        _json.WriteEndObject();
    }

    public ValueTask<System.IO.Pipelines.FlushResult> WriteFinishChunkAsync(int index, string finishReason, CancellationToken ct)
    {
        BeginChunk(index);
        if (kind == CompletionKind.Chat)
        {
            _json.WriteStartObject("delta");
            _json.WriteEndObject();
        }
        else
        {
            _json.WriteString("text", "");
        }
        return EndChunkAsync(finishReason, default, ct);
    }

    /// <summary>The last chunk with stream_options.include_usage: empty choices, usage filled in.</summary>
    public ValueTask<System.IO.Pipelines.FlushResult> WriteUsageChunkAsync(int promptTokens, int completionTokens, CancellationToken ct)
    {
        context.Response.BodyWriter.Write(DataPrefix);
        _json.Reset(context.Response.BodyWriter);
        WriteEnvelope(chunk: true);
        _json.WriteStartArray("choices");
        _json.WriteEndArray();
        WriteUsage(promptTokens, completionTokens);
        _json.WriteEndObject();
        _json.Flush();
        context.Response.BodyWriter.Write(EventEnd);
        return context.Response.BodyWriter.FlushAsync(ct);
    }

    public ValueTask<System.IO.Pipelines.FlushResult> WriteDoneAsync(CancellationToken ct)
    {
        context.Response.BodyWriter.Write(Done);
        return context.Response.BodyWriter.FlushAsync(ct);
    }

    /// <summary>An error after the stream started: OpenAI sends it as a data event.</summary>
    public ValueTask<System.IO.Pipelines.FlushResult> WriteStreamErrorAsync(ApiError error, CancellationToken ct)
    {
        context.Response.BodyWriter.Write(DataPrefix);
        _json.Reset(context.Response.BodyWriter);
        error.Write(_json);
        _json.Flush();
        context.Response.BodyWriter.Write(EventEnd);
        return context.Response.BodyWriter.FlushAsync(ct);
    }

    public async Task WriteCompleteAsync(IReadOnlyList<CompletedChoice> choices, int promptTokens, int completionTokens, CancellationToken ct)
    {
        context.Response.StatusCode = 200;
        context.Response.ContentType = "application/json";
        _json.Reset(context.Response.BodyWriter);
        WriteEnvelope(chunk: false);
        _json.WriteStartArray("choices");
        for (var index = 0; index < choices.Count; index++)
        {
            var (text, finishReason, logprobs, toolCalls, reasoning) = choices[index];
            _json.WriteStartObject();
            _json.WriteNumber("index", index);
            if (kind == CompletionKind.Chat)
            {
                _json.WriteStartObject("message");
                _json.WriteString("role", "assistant");
                // OpenAI sends null content beside tool calls when the model wrote no text.
                if (text.Length == 0 && toolCalls is { Count: > 0 }) _json.WriteNull("content");
                else _json.WriteString("content", text);
                if (!string.IsNullOrEmpty(reasoning)) _json.WriteString("reasoning_content", reasoning);
                if (toolCalls is { Count: > 0 })
                {
                    _json.WriteStartArray("tool_calls");
                    foreach (var call in toolCalls)
                    {
                        _json.WriteStartObject();
                        WriteToolCallFields(call);
                        _json.WriteEndObject();
                    }
                    _json.WriteEndArray();
                }
                _json.WriteNull("refusal");
                _json.WriteEndObject();
            }
            else
            {
                _json.WriteString("text", text);
            }
            WriteLogprobs(logprobs);
            _json.WriteString("finish_reason", finishReason);
            _json.WriteEndObject();
        }
        _json.WriteEndArray();
        WriteUsage(promptTokens, completionTokens);
        _json.WriteEndObject();
        await _json.FlushAsync(ct);
    }

    private void BeginChunk(int index)
    {
        context.Response.BodyWriter.Write(DataPrefix);
        _json.Reset(context.Response.BodyWriter);
        WriteEnvelope(chunk: true);
        _json.WriteStartArray("choices");
        _json.WriteStartObject();
        _json.WriteNumber("index", index);
    }

    private ValueTask<System.IO.Pipelines.FlushResult> EndChunkAsync(string? finishReason, LogprobsSlice logprobs, CancellationToken ct)
    {
        WriteLogprobs(logprobs);
        if (finishReason is null) _json.WriteNull("finish_reason");
        else _json.WriteString("finish_reason", finishReason);
        _json.WriteEndObject();
        _json.WriteEndArray();
        if (includeUsage) _json.WriteNull("usage");
        _json.WriteEndObject();
        _json.Flush();
        context.Response.BodyWriter.Write(EventEnd);
        return context.Response.BodyWriter.FlushAsync(ct);
    }

    // OpenAI reports a probability that underflows (or a banned token) as -9999 rather than -infinity, which JSON cannot hold.
    private const float LogprobFloor = -9999f;

    private static float Reported(float logprob) => logprob > LogprobFloor ? logprob : LogprobFloor;

    /// <summary>The choice's "logprobs": null when not requested, else chat's content list or completions' four arrays.</summary>
    private void WriteLogprobs(LogprobsSlice slice)
    {
        if (slice.Store is not { } store)
        {
            _json.WriteNull("logprobs");
            return;
        }
        var pieces = slice.Pieces!;
        _json.WriteStartObject("logprobs");
        if (kind == CompletionKind.Chat)
        {
            _json.WriteStartArray("content");
            for (var i = slice.From; i < slice.To; i++)
            {
                _json.WriteStartObject();
                WriteTokenFields(pieces, store.Token(i), store.Logprob(i));
                _json.WriteStartArray("top_logprobs");
                for (var r = 0; r < store.TopLength; r++)
                {
                    _json.WriteStartObject();
                    WriteTokenFields(pieces, store.TopId(i, r), store.TopLogprob(i, r));
                    _json.WriteEndObject();
                }
                _json.WriteEndArray();
                _json.WriteEndObject();
            }
            _json.WriteEndArray();
            _json.WriteNull("refusal");
        }
        else
        {
            _json.WriteStartArray("tokens");
            for (var i = slice.From; i < slice.To; i++) _json.WriteStringValue(pieces.Text(store.Token(i)));
            _json.WriteEndArray();
            _json.WriteStartArray("token_logprobs");
            for (var i = slice.From; i < slice.To; i++) _json.WriteNumberValue(Reported(store.Logprob(i)));
            _json.WriteEndArray();
            // Completions list the top k and always the sampled token too (up to k + 1 entries), keyed by text.
            _json.WriteStartArray("top_logprobs");
            for (var i = slice.From; i < slice.To; i++)
            {
                _json.WriteStartObject();
                var sampledListed = false;
                for (var r = 0; r < store.TopLength; r++)
                {
                    var id = store.TopId(i, r);
                    if (!FirstWithText(pieces, store, i, r)) continue;
                    sampledListed |= id == store.Token(i) || pieces.Text(id) == pieces.Text(store.Token(i));
                    _json.WriteNumber(pieces.Text(id), Reported(store.TopLogprob(i, r)));
                }
                if (!sampledListed) _json.WriteNumber(pieces.Text(store.Token(i)), Reported(store.Logprob(i)));
                _json.WriteEndObject();
            }
            _json.WriteEndArray();
            _json.WriteStartArray("text_offset");
            for (var i = slice.From; i < slice.To; i++) _json.WriteNumberValue(store.TextStart(i));
            _json.WriteEndArray();
        }
        _json.WriteEndObject();
    }

    /// <summary>Two ids can share a text; a JSON object keeps only the first (the likelier).</summary>
    private static bool FirstWithText(TokenPieces pieces, Streaming.TokenLogprobs store, int i, int rank)
    {
        var text = pieces.Text(store.TopId(i, rank));
        for (var r = 0; r < rank; r++)
            if (pieces.Text(store.TopId(i, r)) == text) return false;
        return true;
    }

    private void WriteTokenFields(TokenPieces pieces, int token, float logprob)
    {
        _json.WriteString("token", pieces.Text(token));
        _json.WriteNumber("logprob", Reported(logprob));
        _json.WriteStartArray("bytes");
        foreach (var b in pieces.Bytes(token)) _json.WriteNumberValue(b);
        _json.WriteEndArray();
    }

    private void WriteEnvelope(bool chunk)
    {
        _json.WriteStartObject();
        _json.WriteString("id", id);
        _json.WriteString("object", chunk && kind == CompletionKind.Chat ? "chat.completion.chunk" : ObjectName);
        _json.WriteNumber("created", created);
        _json.WriteString("model", model);
        _json.WriteNull("system_fingerprint");
    }

    private void WriteUsage(int promptTokens, int completionTokens)
    {
        _json.WriteStartObject("usage");
        _json.WriteNumber("prompt_tokens", promptTokens);
        _json.WriteNumber("completion_tokens", completionTokens);
        _json.WriteNumber("total_tokens", promptTokens + completionTokens);
        _json.WriteEndObject();
    }
}

/// <summary>Entries [From, To) of a generation's logprobs for one chunk or choice; Store null when none were asked for.</summary>
internal readonly record struct LogprobsSlice(Streaming.TokenLogprobs? Store, TokenPieces? Pieces, int From, int To);

/// <summary>One finished choice of a non-streamed answer.</summary>
internal sealed record CompletedChoice(string Text, string FinishReason, LogprobsSlice Logprobs,
    IReadOnlyList<Chat.ToolCall>? ToolCalls = null, string? Reasoning = null);
