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

    public async Task StartStreamAsync()
    {
        var response = context.Response;
        response.StatusCode = 200;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        await response.StartAsync(context.RequestAborted);
    }

    /// <summary>The first chat chunk: the assistant role with empty content, as OpenAI sends it.</summary>
    public ValueTask<System.IO.Pipelines.FlushResult> WriteRoleChunkAsync(CancellationToken ct)
    {
        BeginChunk();
        _json.WriteStartObject("delta");
        _json.WriteString("role", "assistant");
        _json.WriteString("content", "");
        _json.WriteEndObject();
        return EndChunkAsync(finishReason: null, ct);
    }

    public ValueTask<System.IO.Pipelines.FlushResult> WriteTextChunkAsync(string text, CancellationToken ct)
    {
        BeginChunk();
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
        return EndChunkAsync(finishReason: null, ct);
    }

    /// <summary>Reasoning text (llama.cpp's delta.reasoning_content).</summary>
    public ValueTask<System.IO.Pipelines.FlushResult> WriteReasoningChunkAsync(string text, CancellationToken ct)
    {
        BeginChunk();
        _json.WriteStartObject("delta");
        _json.WriteString("reasoning_content", text);
        _json.WriteEndObject();
        return EndChunkAsync(finishReason: null, ct);
    }

    /// <summary>One whole tool call as a delta.tool_calls entry (id, name and all arguments in one chunk).</summary>
    public ValueTask<System.IO.Pipelines.FlushResult> WriteToolCallChunkAsync(int index, Chat.ToolCall call, CancellationToken ct)
    {
        BeginChunk();
        _json.WriteStartObject("delta");
        _json.WriteStartArray("tool_calls");
        _json.WriteStartObject();
        _json.WriteNumber("index", index);
        WriteToolCallFields(call);
        _json.WriteEndObject();
        _json.WriteEndArray();
        _json.WriteEndObject();
        return EndChunkAsync(finishReason: null, ct);
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

    public ValueTask<System.IO.Pipelines.FlushResult> WriteFinishChunkAsync(string finishReason, CancellationToken ct)
    {
        BeginChunk();
        if (kind == CompletionKind.Chat)
        {
            _json.WriteStartObject("delta");
            _json.WriteEndObject();
        }
        else
        {
            _json.WriteString("text", "");
        }
        return EndChunkAsync(finishReason, ct);
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

    public async Task WriteCompleteAsync(string text, string finishReason, int promptTokens, int completionTokens, CancellationToken ct,
        IReadOnlyList<Chat.ToolCall>? toolCalls = null, string? reasoning = null)
    {
        context.Response.StatusCode = 200;
        context.Response.ContentType = "application/json";
        _json.Reset(context.Response.BodyWriter);
        WriteEnvelope(chunk: false);
        _json.WriteStartArray("choices");
        _json.WriteStartObject();
        _json.WriteNumber("index", 0);
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
        _json.WriteNull("logprobs");
        _json.WriteString("finish_reason", finishReason);
        _json.WriteEndObject();
        _json.WriteEndArray();
        WriteUsage(promptTokens, completionTokens);
        _json.WriteEndObject();
        await _json.FlushAsync(ct);
    }

    private void BeginChunk()
    {
        context.Response.BodyWriter.Write(DataPrefix);
        _json.Reset(context.Response.BodyWriter);
        WriteEnvelope(chunk: true);
        _json.WriteStartArray("choices");
        _json.WriteStartObject();
        _json.WriteNumber("index", 0);
    }

    private ValueTask<System.IO.Pipelines.FlushResult> EndChunkAsync(string? finishReason, CancellationToken ct)
    {
        _json.WriteNull("logprobs");
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
