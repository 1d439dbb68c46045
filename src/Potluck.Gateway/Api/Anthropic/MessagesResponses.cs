using System.Buffers;
using System.IO.Pipelines;
using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Potluck.Gateway.Api.Anthropic;

/// <summary>One content block of an answer: text, thinking (the model's reasoning), or a tool call with its input as JSON text of an object.</summary>
public sealed record AnswerBlock(string Type, string? Text = null, string? ToolUseId = null, string? ToolName = null, string? InputJson = null)
{
    public static AnswerBlock OfText(string text) => new("text", Text: text);
    public static AnswerBlock OfToolUse(string id, string name, string inputJson) => new("tool_use", ToolUseId: id, ToolName: name, InputJson: inputJson);
}

/// <summary>
/// Writes Anthropic Messages bodies and SSE events (message_start ... message_stop) straight into the response
/// pipe with one reused Utf8JsonWriter, so streaming allocates nothing per event beyond the token's text.
/// </summary>
internal sealed class MessagesResponses(HttpContext context, string id, string model)
{
    private static readonly byte[] EventPrefix = "event: "u8.ToArray();
    private static readonly byte[] DataPrefix = "\ndata: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();
    private static readonly byte[] Ping = "event: ping\ndata: {\"type\":\"ping\"}\n\n"u8.ToArray();
    private readonly Utf8JsonWriter _json = new(context.Response.BodyWriter, new JsonWriterOptions { SkipValidation = true });
    private PipeWriter Body => context.Response.BodyWriter;

    public async Task WriteCompleteAsync(IReadOnlyList<AnswerBlock> content, string stopReason, string? stopSequence, int inputTokens, int outputTokens,
        CancellationToken ct)
    {
        context.Response.StatusCode = 200;
        context.Response.ContentType = "application/json";
        _json.Reset(Body);
        WriteMessage(content, stopReason, stopSequence, inputTokens, outputTokens);
        await _json.FlushAsync(ct);
    }

    public Task StartStreamAsync() => CompletionResponses.StartEventStreamAsync(context);

    /// <summary>Whether the stream started already (early, while the request waited for a slot).</summary>
    public bool HasStarted => context.Response.HasStarted;

    /// <summary>message_start (the message with no content yet and the input token count), then a ping.</summary>
    public ValueTask<FlushResult> WriteMessageStartAsync(int inputTokens, CancellationToken ct)
    {
        BeginEvent("message_start"u8);
        _json.WriteStartObject();
        _json.WriteString("type", "message_start");
        _json.WritePropertyName("message");
        WriteMessage([], stopReason: null, stopSequence: null, inputTokens, outputTokens: 0);
        _json.WriteEndObject();
        EndEvent();
        Body.Write(Ping);
        return Body.FlushAsync(ct);
    }

    /// <summary>content_block_start: an empty text block, or a tool_use block with empty input (filled by input_json_delta).</summary>
    public ValueTask<FlushResult> WriteBlockStartAsync(int index, AnswerBlock block, CancellationToken ct)
    {
        BeginEvent("content_block_start"u8);
        _json.WriteStartObject();
        _json.WriteString("type", "content_block_start");
        _json.WriteNumber("index", index);
        _json.WritePropertyName("content_block");
        if (block.Type != "tool_use")
        {
            WriteBlock(new AnswerBlock(block.Type, Text: ""));
        }
        else
        {
            _json.WriteStartObject();
            _json.WriteString("type", "tool_use");
            _json.WriteString("id", block.ToolUseId);
            _json.WriteString("name", block.ToolName);
            _json.WriteStartObject("input");
            _json.WriteEndObject();
            WriteDirectCaller();
            _json.WriteEndObject();
        }
        _json.WriteEndObject();
        EndEvent();
        return Body.FlushAsync(ct);
    }

    public ValueTask<FlushResult> WriteTextDeltaAsync(int index, string text, CancellationToken ct) => WriteDeltaAsync(index, "text_delta", "text", text, ct);

    public ValueTask<FlushResult> WriteThinkingDeltaAsync(int index, string text, CancellationToken ct) => WriteDeltaAsync(index, "thinking_delta", "thinking", text, ct);

    public ValueTask<FlushResult> WriteInputJsonDeltaAsync(int index, string partialJson, CancellationToken ct) =>
        WriteDeltaAsync(index, "input_json_delta", "partial_json", partialJson, ct);

    public ValueTask<FlushResult> WriteBlockStopAsync(int index, CancellationToken ct)
    {
        BeginEvent("content_block_stop"u8);
        _json.WriteStartObject();
        _json.WriteString("type", "content_block_stop");
        _json.WriteNumber("index", index);
        _json.WriteEndObject();
        EndEvent();
        return Body.FlushAsync(ct);
    }

    /// <summary>message_delta (stop reason, cumulative usage), then message_stop.</summary>
    public ValueTask<FlushResult> WriteMessageEndAsync(string stopReason, string? stopSequence, int inputTokens, int outputTokens, CancellationToken ct)
    {
        BeginEvent("message_delta"u8);
        _json.WriteStartObject();
        _json.WriteString("type", "message_delta");
        _json.WriteStartObject("delta");
        _json.WriteString("stop_reason", stopReason);
        if (stopSequence is null) _json.WriteNull("stop_sequence");
        else _json.WriteString("stop_sequence", stopSequence);
        _json.WriteEndObject();
        _json.WritePropertyName("usage");
        WriteUsage(inputTokens, outputTokens);
        _json.WriteEndObject();
        EndEvent();
        BeginEvent("message_stop"u8);
        _json.WriteStartObject();
        _json.WriteString("type", "message_stop");
        _json.WriteEndObject();
        EndEvent();
        return Body.FlushAsync(ct);
    }

    /// <summary>An error after the stream started: Anthropic sends it as an "error" event.</summary>
    public ValueTask<FlushResult> WriteStreamErrorAsync(ApiError error, CancellationToken ct)
    {
        BeginEvent("error"u8);
        AnthropicErrors.Write(_json, error);
        EndEvent();
        return Body.FlushAsync(ct);
    }

    private ValueTask<FlushResult> WriteDeltaAsync(int index, string deltaType, string field, string value, CancellationToken ct)
    {
        BeginEvent("content_block_delta"u8);
        _json.WriteStartObject();
        _json.WriteString("type", "content_block_delta");
        _json.WriteNumber("index", index);
        _json.WriteStartObject("delta");
        _json.WriteString("type", deltaType);
        _json.WriteString(field, value);
        _json.WriteEndObject();
        _json.WriteEndObject();
        EndEvent();
        return Body.FlushAsync(ct);
    }

    private void BeginEvent(ReadOnlySpan<byte> name)
    {
        Body.Write(EventPrefix);
        Body.Write(name);
        Body.Write(DataPrefix);
        _json.Reset(Body);
    }

    private void EndEvent()
    {
        _json.Flush();
        Body.Write(EventEnd);
    }

    private void WriteMessage(IReadOnlyList<AnswerBlock> content, string? stopReason, string? stopSequence, int inputTokens, int outputTokens)
    {
        _json.WriteStartObject();
        _json.WriteString("id", id);
        _json.WriteString("type", "message");
        _json.WriteString("role", "assistant");
        _json.WriteString("model", model);
        _json.WriteStartArray("content");
        foreach (var block in content) WriteBlock(block);
        _json.WriteEndArray();
        if (stopReason is null) _json.WriteNull("stop_reason");
        else _json.WriteString("stop_reason", stopReason);
        if (stopSequence is null) _json.WriteNull("stop_sequence");
        else _json.WriteString("stop_sequence", stopSequence);
        _json.WritePropertyName("usage");
        WriteUsage(inputTokens, outputTokens);
        _json.WriteEndObject();
    }

    private void WriteBlock(AnswerBlock block)
    {
        _json.WriteStartObject();
        _json.WriteString("type", block.Type);
        if (block.Type == "text")
        {
            _json.WriteString("text", block.Text);
        }
        else if (block.Type == "thinking")
        {
            _json.WriteString("thinking", block.Text);
            // Anthropic signs its thinking so it can be sent back unchanged; this gateway drops it from history instead.
            _json.WriteString("signature", "");
        }
        else
        {
            _json.WriteString("id", block.ToolUseId);
            _json.WriteString("name", block.ToolName);
            _json.WritePropertyName("input");
            _json.WriteRawValue(block.InputJson ?? "{}");
            WriteDirectCaller();
        }
        _json.WriteEndObject();
    }

    /// <summary>The model called the tool itself (not a server tool on its behalf).</summary>
    private void WriteDirectCaller()
    {
        _json.WriteStartObject("caller");
        _json.WriteString("type", "direct");
        _json.WriteEndObject();
    }

    private void WriteUsage(int inputTokens, int outputTokens)
    {
        _json.WriteStartObject();
        _json.WriteNumber("input_tokens", inputTokens);
        // No prompt cache is billed or reported separately.
        _json.WriteNumber("cache_creation_input_tokens", 0);
        _json.WriteNumber("cache_read_input_tokens", 0);
        _json.WriteNumber("output_tokens", outputTokens);
        _json.WriteEndObject();
    }
}
