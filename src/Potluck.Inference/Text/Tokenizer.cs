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

    public void Dispose() => _weights.Dispose();
}
