using System.Text;
using Potluck.Gateway.Chat;

namespace Potluck.Gateway.Api.Anthropic;

/// <summary>
/// Turns the generated output into Anthropic content blocks: text, thinking (the family's reasoning) and tool_use
/// (parsed by the chat output parser, as for chat completions). Consecutive pieces of one kind form one block, so
/// the streamed blocks and the whole message's blocks are the same.
/// </summary>
internal sealed class AnswerBlocks(ChatOutput? output)
{
    private readonly List<ChatOutputEvent> _plain = new(1);
    private readonly List<AnswerBlock> _done = [];
    private readonly StringBuilder _open = new();
    private string? _openType;
    // The block being streamed: its index, type, and whether one is open.
    private int _streamIndex;
    private string? _streamType;
    private bool _streamOpen;

    // Blank text not yet streamed: it opens a text block only once real text follows, or at the end without calls.
    private readonly StringBuilder _blank = new();

    public bool HasToolUse { get; private set; }

    /// <summary>The whole answer's blocks (after <see cref="Finish"/>). Blank text beside tool calls is no block, as in Claude's answers.</summary>
    public IReadOnlyList<AnswerBlock> Blocks
    {
        get
        {
            CloseKept();
            if (HasToolUse) _done.RemoveAll(b => b.Type == "text" && string.IsNullOrWhiteSpace(b.Text));
            return _done;
        }
    }

    /// <summary>A generated piece as output events: plain text when no parser applies (no tools, no reasoning markers).</summary>
    public IReadOnlyList<ChatOutputEvent> Push(string piece)
    {
        IReadOnlyList<ChatOutputEvent> events;
        if (output is null)
        {
            _plain.Clear();
            _plain.Add(new ChatOutputEvent(ChatOutputKind.Content, piece));
            events = _plain;
        }
        else
        {
            events = output.Push(piece);
        }
        Keep(events);
        return events;
    }

    public IReadOnlyList<ChatOutputEvent> Finish()
    {
        if (output is null) return [];
        var events = output.Finish();
        Keep(events);
        return events;
    }

    /// <summary>Streams events as content_block_start/delta/stop, opening a block when the kind changes.</summary>
    public async ValueTask WriteAsync(MessagesResponses responses, IReadOnlyList<ChatOutputEvent> events, CancellationToken ct)
    {
        foreach (var e in events)
        {
            if (e.Kind == ChatOutputKind.ToolCall)
            {
                _blank.Clear();
                await CloseAsync(responses, ct);
                var index = _streamIndex++;
                var call = e.Call!;
                await responses.WriteBlockStartAsync(index, AnswerBlock.OfToolUse(call.Id, call.Name, "{}"), ct);
                await responses.WriteInputJsonDeltaAsync(index, call.ArgumentsJson, ct);
                await responses.WriteBlockStopAsync(index, ct);
                continue;
            }
            if (e.Text.Length == 0) continue;
            var type = e.Kind == ChatOutputKind.Reasoning ? "thinking" : "text";
            var text = e.Text;
            if (type == "text" && _streamType != "text")
            {
                if (string.IsNullOrWhiteSpace(text))
                {
                    _blank.Append(text);
                    continue;
                }
                if (_blank.Length > 0)
                {
                    text = _blank + text;
                    _blank.Clear();
                }
            }
            await WriteTextAsync(responses, type, text, ct);
        }
    }

    private async ValueTask WriteTextAsync(MessagesResponses responses, string type, string text, CancellationToken ct)
    {
        if (_streamType != type)
        {
            await CloseAsync(responses, ct);
            _streamType = type;
            _streamOpen = true;
            await responses.WriteBlockStartAsync(_streamIndex, new AnswerBlock(type), ct);
        }
        if (type == "text") await responses.WriteTextDeltaAsync(_streamIndex, text, ct);
        else await responses.WriteThinkingDeltaAsync(_streamIndex, text, ct);
    }

    /// <summary>The end of the stream: held blank text is the answer's text only when there was no tool call; then the open block closes.</summary>
    public async ValueTask EndAsync(MessagesResponses responses, CancellationToken ct)
    {
        if (_blank.Length > 0 && !HasToolUse) await WriteTextAsync(responses, "text", _blank.ToString(), ct);
        _blank.Clear();
        await CloseAsync(responses, ct);
    }

    /// <summary>Closes the block being streamed, if any.</summary>
    private async ValueTask CloseAsync(MessagesResponses responses, CancellationToken ct)
    {
        if (!_streamOpen) return;
        await responses.WriteBlockStopAsync(_streamIndex++, ct);
        _streamOpen = false;
        _streamType = null;
    }

    private void Keep(IReadOnlyList<ChatOutputEvent> events)
    {
        foreach (var e in events)
        {
            if (e.Kind == ChatOutputKind.ToolCall)
            {
                CloseKept();
                HasToolUse = true;
                _done.Add(AnswerBlock.OfToolUse(e.Call!.Id, e.Call.Name, e.Call.ArgumentsJson));
                continue;
            }
            if (e.Text.Length == 0) continue;
            var type = e.Kind == ChatOutputKind.Reasoning ? "thinking" : "text";
            if (_openType != type) CloseKept();
            _openType = type;
            _open.Append(e.Text);
        }
    }

    private void CloseKept()
    {
        if (_openType is null) return;
        _done.Add(new AnswerBlock(_openType, Text: _open.ToString()));
        _open.Clear();
        _openType = null;
    }
}
