using LLama;

namespace Potluck.Inference.Text;

/// <summary>
/// Turns generated token ids, one at a time, into text. A token may end in the middle of a UTF-8 character
/// (byte-fallback tokens carry single bytes); those bytes are held back until the character completes, so the
/// returned text never contains a partial or replacement character. One instance per output stream; not thread-safe.
/// </summary>
public sealed class StreamingDecoder
{
    private readonly StreamingTokenDecoder _decoder;
    private readonly List<char> _chars = new(64);

    private readonly int _vocabSize;

    internal StreamingDecoder(StreamingTokenDecoder decoder, int vocabSize)
    {
        _decoder = decoder;
        _vocabSize = vocabSize;
    }

    /// <summary>Adds a token and returns the text it completes (empty while a character is still partial).</summary>
    public string Add(int token)
    {
        // llama.cpp aborts the process on an out-of-range id, so bad input must stop here.
        if ((uint)token >= (uint)_vocabSize)
            throw new ArgumentOutOfRangeException(nameof(token), token, $"token id outside the vocabulary [0, {_vocabSize})");
        _decoder.Add(token);
        if (_decoder.AvailableCharacters == 0) return string.Empty;
        _chars.Clear();
        _decoder.Read(_chars);
        return new string(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_chars));
    }

    /// <summary>Forgets held-back bytes, e.g. when a stream restarts.</summary>
    public void Reset() => _decoder.Reset();
}
