using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Potluck.Gateway.Chat;

public enum ChatOutputKind
{
    Content,
    Reasoning,
    ToolCall,
}

/// <summary>One piece of parsed output: text for content or reasoning, or a whole tool call.</summary>
public readonly record struct ChatOutputEvent(ChatOutputKind Kind, string Text, ToolCall? Call = null);

/// <summary>
/// Splits generated text, as it streams, into content, reasoning (&lt;think&gt; or the harmony analysis channel)
/// and tool calls in the family's syntax. Text that might be the start of a marker is held back until it is
/// known, so markers never reach the client. A tool call is reported whole, once its text is complete.
/// </summary>
public sealed partial class ChatOutputParser
{
    private enum State
    {
        Content,
        Reasoning,
        ToolBlock,
        ToolTail,
        HarmonyHeader,
        HarmonyBody,
    }

    private const string ThinkOpen = "<think>";
    private const string ThinkClose = "</think>";
    private const int MaxHarmonyHeader = 512;

    private readonly ChatTemplateTraits _traits;
    private readonly bool _tools;
    private readonly bool _parallel;
    private readonly StringBuilder _pending = new();
    private readonly List<ToolCall> _calls = [];
    private readonly string[] _startMarkers;
    private State _state;
    private bool _atStart = true;
    private string _blockEnd = "";
    private ChatOutputKind _harmonyKind;
    private string? _harmonyRecipient;

    /// <param name="parseTools">Look for tool calls (false with tool_choice none or without tools).</param>
    /// <param name="parallel">parallel_tool_calls: false keeps only the first call.</param>
    public ChatOutputParser(ChatTemplateTraits traits, bool parseTools, bool parallel = true)
    {
        _traits = traits;
        _tools = parseTools;
        _parallel = parallel;
        _startMarkers = FindStartMarkers(traits, parseTools);
        _state = traits.Family == ChatFamily.GptOss ? State.HarmonyHeader : traits.GenerationPromptOpensThink ? State.Reasoning : State.Content;
    }

    /// <summary>Whether this parser changes anything for the family and request (else the plain path streams as is).</summary>
    public static bool Applies(ChatTemplateTraits traits, bool parseTools) => parseTools || traits.Thinking;

    public IReadOnlyList<ToolCall> Calls => _calls;

    public void Push(string text, List<ChatOutputEvent> events)
    {
        _pending.Append(text);
        Process(events, final: false);
    }

    /// <summary>End of output: flushes held text and parses an open tool call.</summary>
    public void Finish(List<ChatOutputEvent> events)
    {
        Process(events, final: true);
        var rest = _pending.ToString();
        _pending.Clear();
        switch (_state)
        {
            case State.Content:
                Emit(events, ChatOutputKind.Content, rest);
                break;
            case State.Reasoning:
                Emit(events, ChatOutputKind.Reasoning, rest);
                break;
            case State.ToolBlock or State.ToolTail:
                if (!ParseCalls(rest, events)) Emit(events, ChatOutputKind.Content, rest);
                break;
            case State.HarmonyHeader:
                // A header that never reached <|message|> is not harmony markup: show it.
                Emit(events, ChatOutputKind.Content, StripMarkers(rest));
                break;
            case State.HarmonyBody:
                EndHarmonyBody(rest, events);
                break;
        }
    }

    private void Process(List<ChatOutputEvent> events, bool final)
    {
        while (_pending.Length > 0)
        {
            var text = _pending.ToString();
            switch (_state)
            {
                case State.Reasoning:
                {
                    // Reasoning is trimmed as llama.cpp trims it: blanks after <think> and before </think> are held back and dropped.
                    if (_reasoningStart)
                    {
                        var blanks = 0;
                        while (blanks < text.Length && char.IsWhiteSpace(text[blanks])) blanks++;
                        _pending.Remove(0, blanks);
                        if (blanks == text.Length) return;
                        _reasoningStart = false;
                        text = _pending.ToString();
                    }
                    var end = text.IndexOf(ThinkClose, StringComparison.Ordinal);
                    if (end < 0)
                    {
                        var keep = PartialSuffix(text, ThinkClose);
                        while (keep < text.Length && char.IsWhiteSpace(text[text.Length - 1 - keep])) keep++;
                        if (final) keep = 0;
                        Take(events, ChatOutputKind.Reasoning, text.Length - keep, 0);
                        return;
                    }
                    var kept = end;
                    while (kept > 0 && char.IsWhiteSpace(text[kept - 1])) kept--;
                    Take(events, ChatOutputKind.Reasoning, kept, end - kept + ThinkClose.Length);
                    _state = State.Content;
                    _atStart = true;
                    break;
                }
                case State.Content:
                {
                    if (_atStart)
                    {
                        var trimmed = text.TrimStart();
                        if (trimmed.Length == 0 && !final) return;
                        if (_tools && StartObjects() is { } prefixes)
                        {
                            // Llama 3 and the generic format start a call with a bare JSON object.
                            var compact = Compact(trimmed, 24);
                            if (!final && prefixes.Any(p => p.StartsWith(compact, StringComparison.Ordinal))) return;
                            if (prefixes.Any(p => compact.StartsWith(p, StringComparison.Ordinal)))
                            {
                                _state = State.ToolTail;
                                return;
                            }
                        }
                        if (trimmed.Length > 0) _atStart = false;
                    }
                    var (at, marker) = FirstMarker(text);
                    if (at < 0)
                    {
                        var keep = final ? 0 : HeldBack(text);
                        Take(events, ChatOutputKind.Content, text.Length - keep, 0);
                        return;
                    }
                    Take(events, ChatOutputKind.Content, at, marker.Length);
                    if (marker == ThinkOpen)
                    {
                        _state = State.Reasoning;
                        _reasoningStart = true;
                    }
                    else
                    {
                        _blockEnd = BlockEnd(marker);
                        _state = _blockEnd.Length > 0 ? State.ToolBlock : State.ToolTail;
                    }
                    break;
                }
                case State.ToolBlock:
                {
                    var end = text.IndexOf(_blockEnd, StringComparison.Ordinal);
                    if (end < 0) return;
                    var body = text[..end];
                    _pending.Remove(0, end + _blockEnd.Length);
                    if (!ParseCalls(body, events)) Emit(events, ChatOutputKind.Content, body);
                    _state = State.Content;
                    break;
                }
                case State.ToolTail:
                    return;
                case State.HarmonyHeader:
                {
                    var message = text.IndexOf("<|message|>", StringComparison.Ordinal);
                    if (message < 0)
                    {
                        if (text.Length > MaxHarmonyHeader)
                        {
                            Emit(events, ChatOutputKind.Content, StripMarkers(text));
                            _pending.Clear();
                        }
                        return;
                    }
                    StartHarmonyBody(text[..message]);
                    _pending.Remove(0, message + "<|message|>".Length);
                    _state = State.HarmonyBody;
                    break;
                }
                case State.HarmonyBody:
                {
                    var end = -1;
                    var endLength = 0;
                    foreach (var marker in HarmonyEnds)
                    {
                        var i = text.IndexOf(marker, StringComparison.Ordinal);
                        if (i >= 0 && (end < 0 || i < end))
                        {
                            end = i;
                            endLength = marker.Length;
                        }
                    }
                    if (end < 0)
                    {
                        if (_harmonyKind == ChatOutputKind.ToolCall) return;
                        var keep = 0;
                        if (!final)
                            foreach (var marker in HarmonyEnds) keep = Math.Max(keep, PartialSuffix(text, marker));
                        Take(events, _harmonyKind, text.Length - keep, 0);
                        return;
                    }
                    var body = text[..end];
                    _pending.Remove(0, end + endLength);
                    EndHarmonyBody(body, events);
                    _state = State.HarmonyHeader;
                    break;
                }
            }
        }
    }

    private static readonly string[] HarmonyEnds = ["<|end|>", "<|call|>", "<|return|>", "<|start|>"];

    private void StartHarmonyBody(string header)
    {
        var channel = HarmonyChannel().Match(header);
        var recipient = HarmonyRecipient().Match(header);
        _harmonyRecipient = recipient.Success ? recipient.Groups[1].Value : null;
        var name = channel.Success ? channel.Groups[1].Value : "final";
        _harmonyKind = name == "analysis" ? ChatOutputKind.Reasoning
            : _tools && _harmonyRecipient is not null && _harmonyRecipient.StartsWith("functions.", StringComparison.Ordinal) ? ChatOutputKind.ToolCall
            : ChatOutputKind.Content;
    }

    private void EndHarmonyBody(string body, List<ChatOutputEvent> events)
    {
        if (_harmonyKind != ChatOutputKind.ToolCall)
        {
            Emit(events, _harmonyKind, body);
            return;
        }
        var name = _harmonyRecipient!["functions.".Length..];
        if (Arguments(body.Trim()) is { } arguments) AddCall(name, arguments, null, events);
        else Emit(events, ChatOutputKind.Content, body);
    }

    [GeneratedRegex(@"<\|channel\|>\s*(\w+)")]
    private static partial Regex HarmonyChannel();

    [GeneratedRegex(@"to=([\w.\-]+)")]
    private static partial Regex HarmonyRecipient();

    private static string StripMarkers(string text) => HarmonyMarker().Replace(text, "");

    [GeneratedRegex(@"<\|[a-z_]+\|>")]
    private static partial Regex HarmonyMarker();

    /// <summary>The bare-object opening that starts a call at the start of output, if the family has one.</summary>
    private string[]? StartObjects() => _traits.Family switch
    {
        ChatFamily.Llama3 => LlamaStarts,
        ChatFamily.Generic => GenericStarts,
        _ => null,
    };

    private static readonly string[] LlamaStarts = ["{\"name\":", "{\"type\":\"function\""];
    private static readonly string[] GenericStarts = ["{\"tool_calls\":"];

    /// <summary>The first characters of <paramref name="text"/> without whitespace, to match an object's opening however it is spaced.</summary>
    private static string Compact(string text, int length)
    {
        var compact = new StringBuilder(length);
        foreach (var c in text)
        {
            if (char.IsWhiteSpace(c)) continue;
            compact.Append(c);
            if (compact.Length == length) break;
        }
        return compact.ToString();
    }

    /// <summary>Markers that open reasoning or a call in this family (fixed per parser: the per-token scan allocates nothing).</summary>
    private static string[] FindStartMarkers(ChatTemplateTraits traits, bool tools)
    {
        var markers = new List<string>();
        if (traits.Thinking && traits.Family != ChatFamily.GptOss) markers.Add(ThinkOpen);
        if (tools)
        {
            switch (traits.Family)
            {
                case ChatFamily.Hermes:
                    markers.Add("<tool_call>");
                    break;
                case ChatFamily.Mistral:
                    markers.Add("[TOOL_CALLS]");
                    break;
                case ChatFamily.Llama3:
                    markers.Add("<|python_tag|>");
                    break;
                case ChatFamily.DeepSeek:
                    markers.Add("<｜tool▁calls▁begin｜>");
                    break;
            }
        }
        return markers.ToArray();
    }

    private static string BlockEnd(string marker) => marker switch
    {
        "<tool_call>" => "</tool_call>",
        "<｜tool▁calls▁begin｜>" => "<｜tool▁calls▁end｜>",
        _ => "",
    };

    private (int At, string Marker) FirstMarker(string text)
    {
        var best = (-1, "");
        foreach (var marker in _startMarkers)
        {
            var i = text.IndexOf(marker, StringComparison.Ordinal);
            if (i >= 0 && (best.Item1 < 0 || i < best.Item1)) best = (i, marker);
        }
        return best;
    }

    private int HeldBack(string text)
    {
        var keep = 0;
        foreach (var marker in _startMarkers) keep = Math.Max(keep, PartialSuffix(text, marker));
        return keep;
    }

    /// <summary>Length of the longest end of <paramref name="text"/> that is a proper prefix of <paramref name="marker"/>.</summary>
    private static int PartialSuffix(string text, string marker)
    {
        for (var length = Math.Min(marker.Length - 1, text.Length); length > 0; length--)
            if (text.AsSpan(text.Length - length).SequenceEqual(marker.AsSpan(0, length))) return length;
        return 0;
    }

    private void Take(List<ChatOutputEvent> events, ChatOutputKind kind, int length, int skip)
    {
        if (length > 0) Emit(events, kind, _pending.ToString(0, length));
        _pending.Remove(0, length + skip);
    }

    private void Emit(List<ChatOutputEvent> events, ChatOutputKind kind, string text)
    {
        if (kind == ChatOutputKind.Reasoning) _trimContent = true;
        // Reasoning ends with the blank line before the answer; the answer does not start with it.
        else if (kind == ChatOutputKind.Content && _trimContent)
        {
            text = text.TrimStart();
            if (text.Length == 0) return;
            _trimContent = false;
        }
        if (text.Length > 0) events.Add(new ChatOutputEvent(kind, text));
    }

    private bool _trimContent;
    private bool _reasoningStart = true;

    /// <summary>Parses the text of one tool-call block (or the tail after a call marker); false if it is not valid.</summary>
    private bool ParseCalls(string body, List<ChatOutputEvent> events)
    {
        var text = body.Trim();
        switch (_traits.Family)
        {
            case ChatFamily.DeepSeek:
            {
                var found = false;
                foreach (Match match in DeepSeekCall().Matches(text))
                {
                    if (Arguments(match.Groups[2].Value.Trim()) is not { } arguments) return found;
                    AddCall(match.Groups[1].Value.Trim(), arguments, null, events);
                    found = true;
                }
                return found;
            }
            case ChatFamily.Llama3 when text.StartsWith("<|python_tag|>", StringComparison.Ordinal):
                return ParseCalls(text["<|python_tag|>".Length..], events);
        }
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(text, new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException)
        {
            return false;
        }
        using (document)
        {
            var root = document.RootElement;
            if (_traits.Family == ChatFamily.Generic)
            {
                if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("tool_calls", out var list) || list.ValueKind != JsonValueKind.Array) return false;
                root = list;
            }
            if (root.ValueKind == JsonValueKind.Object) return CallObject(root, events);
            if (root.ValueKind != JsonValueKind.Array || root.GetArrayLength() == 0) return false;
            foreach (var item in root.EnumerateArray())
                if (!CallObject(item, events)) return false;
            return true;
        }
    }

    [GeneratedRegex(@"<｜tool▁call▁begin｜>(?:function)?<｜tool▁sep｜>([^\n]+)\n```(?:json)?\n([\s\S]*?)\n?```\s*<｜tool▁call▁end｜>")]
    private static partial Regex DeepSeekCall();

    private bool CallObject(JsonElement call, List<ChatOutputEvent> events)
    {
        if (call.ValueKind != JsonValueKind.Object) return false;
        if (call.TryGetProperty("function", out var function) && function.ValueKind == JsonValueKind.Object) call = function;
        if (!call.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String) return false;
        JsonElement arguments = default;
        var has = call.TryGetProperty("arguments", out arguments) || call.TryGetProperty("parameters", out arguments);
        string? argumentsJson = !has ? "{}"
            : arguments.ValueKind == JsonValueKind.Object ? arguments.GetRawText()
            : arguments.ValueKind == JsonValueKind.String ? Arguments(arguments.GetString()!) : null;
        if (argumentsJson is null) return false;
        var id = call.TryGetProperty("id", out var idElement) && idElement.ValueKind == JsonValueKind.String ? idElement.GetString() : null;
        AddCall(name.GetString()!, argumentsJson, id, events);
        return true;
    }

    /// <summary>JSON text of an object, compacted; null when it is not one.</summary>
    private static string? Arguments(string text)
    {
        try
        {
            using var document = JsonDocument.Parse(text, new JsonDocumentOptions { MaxDepth = 64 });
            return document.RootElement.ValueKind == JsonValueKind.Object ? document.RootElement.GetRawText() : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private void AddCall(string name, string arguments, string? id, List<ChatOutputEvent> events)
    {
        if (!_parallel && _calls.Count > 0) return;
        var call = new ToolCall(string.IsNullOrEmpty(id) ? ToolCallIds.New(_traits.Family) : id, name, Compacted(arguments));
        _calls.Add(call);
        events.Add(new ChatOutputEvent(ChatOutputKind.ToolCall, "", call));
    }

    private static readonly JsonSerializerOptions Relaxed = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static string Compacted(string json)
    {
        using var document = JsonDocument.Parse(json);
        return JsonSerializer.Serialize(document.RootElement, Relaxed);
    }
}
