using System.Runtime.InteropServices;
using System.Text;
using LLama;
using LLama.Common;
using LLama.Exceptions;
using LLama.Native;

namespace Potluck.Inference.Text;

/// <summary>The model has no chat template, or llama.cpp does not recognize it.</summary>
public sealed class ChatTemplateException(string message, Exception? inner = null) : EngineException(message, inner);

/// <summary>
/// The model's tokenizer and chat template, straight from llama.cpp: the GGUF is loaded vocab-only, so no
/// weights are read. Thread-safe: every call uses only the immutable vocabulary.
/// </summary>
public sealed class Tokenizer : IDisposable
{
    private const string ChatTemplateKey = "tokenizer.chat_template";

    private readonly LLamaWeights _weights;
    private readonly SafeLlamaModelHandle.Vocabulary _vocab;

    private Tokenizer(LLamaWeights weights, string path)
    {
        _weights = weights;
        _vocab = weights.Vocab;
        Path = path;
        VocabSize = _vocab.Count;
        BosToken = _vocab.BOS is { } bos ? (int)bos : null;
        EosToken = _vocab.EOS is { } eos ? (int)eos : null;
        AddBosByDefault = _vocab.ShouldAddBOS;
        ChatTemplate = weights.Metadata.TryGetValue(ChatTemplateKey, out var template) && !string.IsNullOrEmpty(template) ? template : null;
        SpecialTexts = FindSpecialTexts(_vocab);
    }

    /// <summary>
    /// Texts that llama_tokenize turns into one token only when parse_special is set: control and unknown tokens
    /// (user-defined tokens are matched either way, so they cannot be forged by parsing). Longest first.
    /// </summary>
    internal IReadOnlyList<string> SpecialTexts { get; }

    /// <summary>The vocab-only model handle; llama.cpp's grammar sampler needs it to match token texts.</summary>
    internal SafeLlamaModelHandle ModelHandle => _weights.NativeHandle;

    /// <summary>The bytes llama.cpp's grammar sees for a token: its piece with special tokens rendered.</summary>
    internal byte[] GrammarPiece(int token)
    {
        CheckToken(token);
        Span<byte> buffer = stackalloc byte[256];
        var length = (int)_weights.NativeHandle.TokenToSpan(token, buffer, 0, special: true);
        if (length > buffer.Length)
        {
            var large = new byte[length];
            _weights.NativeHandle.TokenToSpan(token, large, 0, special: true);
            return large;
        }
        return buffer[..length].ToArray();
    }

    private int[]? _singleByteTokens;

    /// <summary>For each byte value, a token whose piece is exactly that byte, or -1 (byte-fallback and BPE vocabularies have all 256).</summary>
    internal int[] SingleByteTokens => _singleByteTokens ??= FindSingleByteTokens();

    private int[] FindSingleByteTokens()
    {
        var map = new int[256];
        Array.Fill(map, -1);
        Span<byte> buffer = stackalloc byte[8];
        for (var id = 0; id < VocabSize; id++)
        {
            if (_weights.NativeHandle.TokenToSpan(id, buffer, 0, special: true) != 1) continue;
            if (map[buffer[0]] < 0) map[buffer[0]] = id;
        }
        return map;
    }

    private static string[] FindSpecialTexts(SafeLlamaModelHandle.Vocabulary vocab)
    {
        var texts = new HashSet<string>(StringComparer.Ordinal);
        for (var id = 0; id < vocab.Count; id++)
        {
            var token = (LLamaToken)id;
            if ((token.GetAttributes(vocab) & (LLamaTokenAttr.Control | LLamaTokenAttr.Unknown)) == 0) continue;
            if (vocab.LLamaTokenToString(token, isSpecialToken: true) is { Length: > 0 } text) texts.Add(text);
        }
        return texts.OrderByDescending(t => t.Length).ThenBy(t => t, StringComparer.Ordinal).ToArray();
    }

    /// <summary>Loads only the vocabulary and metadata of the GGUF at <paramref name="path"/>.</summary>
    public static Tokenizer Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException("model file not found", path);
        LlamaApi.EnsureReady();
        try
        {
            var weights = LLamaWeights.LoadFromFile(new ModelParams(path) { VocabOnly = true, GpuLayerCount = 0 });
            return new Tokenizer(weights, path);
        }
        catch (LoadWeightsFailedException e)
        {
            throw new GgufFormatException(path, "llama.cpp could not load its vocabulary", e);
        }
    }

    public string Path { get; }
    public int VocabSize { get; }
    public int? BosToken { get; }
    public int? EosToken { get; }
    /// <summary>Whether the model asks for BOS at the start of a prompt (tokenizer.ggml.add_bos_token).</summary>
    public bool AddBosByDefault { get; }
    /// <summary>The raw Jinja chat template from the file, or null.</summary>
    public string? ChatTemplate { get; }

    /// <param name="addBos">Prepend BOS (llama.cpp adds it only when the vocabulary wants one).</param>
    /// <param name="parseSpecial">Turn control-token text such as "&lt;|im_start|&gt;" into those tokens rather than plain text.</param>
    public int[] Encode(string text, bool addBos, bool parseSpecial)
    {
        ArgumentNullException.ThrowIfNull(text);
        var tokens = _weights.NativeHandle.Tokenize(text, addBos, parseSpecial, Encoding.UTF8);
        return MemoryMarshal.Cast<LLamaToken, int>(tokens).ToArray();
    }

    /// <summary>Decodes a whole sequence. Control tokens (BOS, EOS, ChatML markers) render as nothing.</summary>
    public string Decode(ReadOnlySpan<int> tokens)
    {
        // llama.cpp aborts the process on an out-of-range id, so bad input must stop here.
        foreach (var token in tokens) CheckToken(token);
        var decoder = new StreamingTokenDecoder(Encoding.UTF8, _weights.NativeHandle) { DecodeSpecialTokens = false };
        decoder.AddRange(MemoryMarshal.Cast<int, LLamaToken>(tokens));
        return decoder.Read();
    }

    /// <summary>A decoder for one output stream; it emits only complete UTF-8 characters.</summary>
    public StreamingDecoder CreateStreamingDecoder(bool renderSpecialTokens = false) =>
        new(new StreamingTokenDecoder(Encoding.UTF8, _weights.NativeHandle) { DecodeSpecialTokens = renderSpecialTokens }, VocabSize);

    internal void CheckToken(int token)
    {
        if ((uint)token >= (uint)VocabSize)
            throw new ArgumentOutOfRangeException(nameof(token), token, $"token id outside the vocabulary [0, {VocabSize})");
    }

    /// <summary>True for EOS, EOT and every other token llama.cpp treats as end of generation (e.g. &lt;|im_end|&gt;).</summary>
    public bool IsEndOfGeneration(int token) =>
        (uint)token < (uint)VocabSize && ((LLamaToken)token).IsEndOfGeneration(_vocab);

    /// <summary>
    /// Formats a conversation with the model's own template through llama_chat_apply_template.
    /// </summary>
    /// <param name="addAssistantPrompt">End with the assistant turn opener so the model continues as the assistant.</param>
    public string ApplyChatTemplate(IReadOnlyList<(string Role, string Content)> messages, bool addAssistantPrompt)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (ChatTemplate is null)
            throw new ChatTemplateException($"'{Path}' has no chat template ({ChatTemplateKey} is missing); send a plain completion prompt instead");

        // LLamaTemplate keeps mutable buffers, so each call gets its own.
        var template = new LLamaTemplate(_weights.NativeHandle, name: null, strict: true) { AddAssistant = addAssistantPrompt };
        foreach (var (role, content) in messages)
        {
            ArgumentException.ThrowIfNullOrEmpty(role);
            template.Add(role, content ?? string.Empty);
        }
        try
        {
            return Encoding.UTF8.GetString(template.Apply());
        }
        catch (Exception e) when (e is RuntimeError or TemplateNotFoundException or MissingTemplateException or InvalidOperationException)
        {
            throw new ChatTemplateException($"llama.cpp does not recognize the chat template of '{Path}': {e.Message}", e);
        }
    }

    /// <summary>
    /// Formats a conversation with the chat template and tokenizes it so that special tokens come only from the
    /// template's own markup: message contents are plain text, so a user writing "&lt;|im_end|&gt;" cannot forge a turn.
    /// </summary>
    /// <remarks>
    /// The template is rendered a second time with a private-use sentinel in place of each content, which shows
    /// which characters of the real rendering are content. When no special token's text touches a content range
    /// (the normal case) the rendering is tokenized in one call with special tokens parsed: exactly the tokens
    /// llama.cpp's own server would produce. Otherwise each template part is tokenized with special tokens and
    /// each content part without.
    /// </remarks>
    public int[] EncodeChat(IReadOnlyList<(string Role, string Content)> messages, bool addAssistantPrompt, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var rendered = ApplyChatTemplate(messages, addAssistantPrompt);
        var marked = new (string Role, string Content)[messages.Count];
        for (var i = 0; i < marked.Length; i++)
            marked[i] = (messages[i].Role, string.IsNullOrEmpty(messages[i].Content) ? "" : Sentinel(i));
        var skeleton = SkeletonParts(ApplyChatTemplate(marked, addAssistantPrompt), messages.Count);

        var aligned = skeleton is null ? null : Align(rendered, skeleton, messages);
        if (aligned is not null && !SpecialTextTouchesContent(rendered, aligned)) return Encode(rendered, addBos, parseSpecial: true);

        // Part by part: markup with special tokens, contents without. When the real rendering does not line up
        // with the skeleton (a template that rewrites contents), the skeleton's markup and the raw contents are used.
        var pieces = aligned is not null
            ? aligned.Select(p => (rendered.Substring(p.Start, p.Length), p.IsContent))
            : skeleton is not null
                ? skeleton.Select(p => p.Content < 0 ? (p.Text, false) : (messages[p.Content].Content, true))
                : [(rendered, true)]; // no usable skeleton: nothing is provably markup, so nothing is parsed as special
        var tokens = new List<int>();
        var first = true;
        foreach (var (text, isContent) in pieces)
        {
            if (text.Length == 0) continue;
            tokens.AddRange(Encode(text, addBos && first, parseSpecial: !isContent));
            first = false;
        }
        if (first && addBos) tokens.AddRange(Encode("", addBos, parseSpecial: false));
        return tokens.ToArray();
    }

    /// <summary>The sentinel rendering as markup parts (Content = -1) and content slots (the message index), or null if malformed.</summary>
    private static List<(string Text, int Content)>? SkeletonParts(string skeleton, int messageCount)
    {
        var parts = new List<(string, int)>();
        var at = 0;
        while (true)
        {
            var open = skeleton.IndexOf(SentinelOpen, at);
            parts.Add((open < 0 ? skeleton[at..] : skeleton[at..open], -1));
            if (open < 0) return parts;
            var close = skeleton.IndexOf(SentinelClose, open);
            if (close < 0 || !int.TryParse(skeleton.AsSpan(open + 1, close - open - 1), System.Globalization.NumberStyles.None,
                    System.Globalization.CultureInfo.InvariantCulture, out var index) || index >= messageCount) return null;
            parts.Add(("", index));
            at = close + 1;
        }
    }

    /// <summary>Character ranges of the real rendering: markup as in the skeleton, each content as sent or trimmed.</summary>
    private static List<(int Start, int Length, bool IsContent)>? Align(
        string rendered, List<(string Text, int Content)> skeleton, IReadOnlyList<(string Role, string Content)> messages)
    {
        var ranges = new List<(int, int, bool)>(skeleton.Count);
        var pos = 0;
        for (var k = 0; k < skeleton.Count; k++)
        {
            var (text, index) = skeleton[k];
            if (index < 0)
            {
                if (!rendered.AsSpan(pos).StartsWith(text, StringComparison.Ordinal)) return null;
                ranges.Add((pos, text.Length, false));
                pos += text.Length;
                continue;
            }
            // The markup after a content slot comes next in the skeleton (parts alternate markup, slot, markup).
            var following = k + 1 < skeleton.Count ? skeleton[k + 1].Text : "";
            var content = messages[index].Content;
            var matched = -1;
            foreach (var form in new[] { content, content.Trim(), content.TrimEnd(), content.TrimStart() })
            {
                var rest = rendered.AsSpan(pos);
                if (rest.StartsWith(form, StringComparison.Ordinal) && rest[form.Length..].StartsWith(following, StringComparison.Ordinal))
                {
                    matched = form.Length;
                    break;
                }
            }
            if (matched < 0) return null;
            ranges.Add((pos, matched, true));
            pos += matched;
        }
        return pos == rendered.Length ? ranges : null;
    }

    private bool SpecialTextTouchesContent(string rendered, List<(int Start, int Length, bool IsContent)> parts)
    {
        foreach (var special in SpecialTexts)
        {
            for (var i = rendered.IndexOf(special, StringComparison.Ordinal); i >= 0;
                 i = i + 1 < rendered.Length ? rendered.IndexOf(special, i + 1, StringComparison.Ordinal) : -1)
            {
                var end = i + special.Length;
                foreach (var (start, length, isContent) in parts)
                    if (isContent && length > 0 && i < start + length && end > start) return true;
            }
        }
        return false;
    }

    // Private-use characters: no chat template emits them, and they survive trimming and role formatting.
    private const char SentinelOpen = '\uE000';
    private const char SentinelClose = '\uE001';
    private static string Sentinel(int index) => $"{SentinelOpen}{index.ToString(System.Globalization.CultureInfo.InvariantCulture)}{SentinelClose}";

    public void Dispose() => _weights.Dispose();
}
