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

    internal StreamingDecoder(StreamingTokenDecoder decoder) => _decoder = decoder;

    /// <summary>Adds a token and returns the text it completes (empty while a character is still partial).</summary>
    public string Add(int token)
    {
        _decoder.Add(token);
        if (_decoder.AvailableCharacters == 0) return string.Empty;
        _chars.Clear();
        _decoder.Read(_chars);
        return new string(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_chars));
    }

    /// <summary>Forgets held-back bytes, e.g. when a stream restarts.</summary>
    public void Reset() => _decoder.Reset();
}
