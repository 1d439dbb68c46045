using System.Runtime.CompilerServices;
using System.Text;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Api;

/// <summary>
/// Each token's text and UTF-8 bytes as the logprobs report them, read from llama.cpp once per token id and kept.
/// A token that is not whole UTF-8 (a byte-fallback piece of a character) is named "bytes:\xNN..." as OpenAI does;
/// its exact bytes are in <see cref="Bytes"/>. Thread-safe: a racing first read stores an equal value.
/// </summary>
internal sealed class TokenPieces
{
    private static readonly ConditionalWeakTable<Tokenizer, TokenPieces> PerTokenizer = [];
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly Tokenizer _tokenizer;
    private readonly string?[] _texts;
    private readonly byte[]?[] _bytes;

    private TokenPieces(Tokenizer tokenizer)
    {
        _tokenizer = tokenizer;
        _texts = new string?[tokenizer.VocabSize];
        _bytes = new byte[tokenizer.VocabSize][];
    }

    public static TokenPieces For(Tokenizer tokenizer) => PerTokenizer.GetValue(tokenizer, t => new TokenPieces(t));

    public string Text(int token)
    {
        if (_texts[token] is { } text) return text;
        var bytes = Bytes(token);
        try
        {
            text = StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            var named = new StringBuilder("bytes:", 6 + 4 * bytes.Length);
            foreach (var b in bytes) named.Append("\\x").Append(b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture));
            text = named.ToString();
        }
        return _texts[token] = text;
    }

    public byte[] Bytes(int token)
    {
        if (_bytes[token] is { } cached) return cached;
        Span<byte> buffer = stackalloc byte[256];
        var length = _tokenizer.TokenBytes(token, buffer);
        byte[] bytes;
        if (length <= buffer.Length)
        {
            bytes = buffer[..Math.Max(length, 0)].ToArray();
        }
        else
        {
            bytes = new byte[length];
            _tokenizer.TokenBytes(token, bytes);
        }
        return _bytes[token] = bytes;
    }
}
