using System.Text;
using Potluck.Gateway.Api;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Chat;

/// <summary>
/// One chat response's parsed output: feeds generated pieces to the family's <see cref="ChatOutputParser"/>, keeps
/// content, reasoning and tool calls for a whole response, and writes them as stream chunks.
/// </summary>
internal sealed class ChatOutput
{
    private readonly ChatOutputParser _parser;
    private readonly List<ChatOutputEvent> _events = [];
    private readonly StringBuilder _content = new();
    private readonly StringBuilder _reasoning = new();

    private ChatOutput(ChatOutputParser parser, bool rendersSpecialTokens)
    {
        _parser = parser;
        RendersSpecialTokens = rendersSpecialTokens;
    }

    /// <summary>The family's markers may be control tokens (harmony, [TOOL_CALLS]): decode them as text for the parser. The generic format is plain text.</summary>
    public bool RendersSpecialTokens { get; }

    /// <summary>A parser for this request, or null when the plain path applies (no tools, no reasoning markers).</summary>
    public static ChatOutput? For(CompletionRequest request, Tokenizer tokenizer)
    {
        if (request.Kind != CompletionKind.Chat) return null;
        var traits = ChatTemplateTraits.For(tokenizer.ChatTemplate);
        var tools = ChatPrompt.ParsesTools(request);
        return ChatOutputParser.Applies(traits, tools)
            ? new ChatOutput(new ChatOutputParser(traits, tools, request.ParallelToolCalls), traits.Family != ChatFamily.Generic)
            : null;
    }

    /// <summary>The text beside the calls; only blanks between calls count as none (OpenAI's null content).</summary>
    public string Content => Calls.Count > 0 && string.IsNullOrWhiteSpace(_content.ToString()) ? "" : _content.ToString();
    public string Reasoning => _reasoning.ToString();
    public IReadOnlyList<ToolCall> Calls => _parser.Calls;

    /// <summary>OpenAI's finish_reason: tool_calls when the model called tools and was not cut off.</summary>
    public string FinishReason(string plain) => Calls.Count > 0 && plain != "length" ? "tool_calls" : plain;

    public IReadOnlyList<ChatOutputEvent> Push(string piece)
    {
        _events.Clear();
        _parser.Push(piece, _events);
        Keep();
        return _events;
    }

    public IReadOnlyList<ChatOutputEvent> Finish()
    {
        _events.Clear();
        _parser.Finish(_events);
        Keep();
        return _events;
    }

    private void Keep()
    {
        foreach (var e in _events)
        {
            if (e.Kind == ChatOutputKind.Content) _content.Append(e.Text);
            else if (e.Kind == ChatOutputKind.Reasoning) _reasoning.Append(e.Text);
        }
    }

    public async ValueTask WriteAsync(CompletionResponses responses, IReadOnlyList<ChatOutputEvent> events, CancellationToken ct)
    {
        var callIndex = Calls.Count;
        foreach (var e in events)
            if (e.Kind == ChatOutputKind.ToolCall) callIndex--;
        foreach (var e in events)
        {
            switch (e.Kind)
            {
                case ChatOutputKind.Content:
                    await responses.WriteTextChunkAsync(e.Text, ct);
                    break;
                case ChatOutputKind.Reasoning:
                    await responses.WriteReasoningChunkAsync(e.Text, ct);
                    break;
                case ChatOutputKind.ToolCall:
                    await responses.WriteToolCallChunkAsync(callIndex++, e.Call!, ct);
                    break;
            }
        }
    }
}
