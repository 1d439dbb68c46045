namespace Potluck.Gateway.Streaming;

/// <summary>
/// Finds stop sequences in streamed text. Text that could still be the start of a stop sequence is held back,
/// so the client never sees any part of a stop sequence. Offsets are in UTF-16 chars of the whole output.
/// </summary>
public sealed class StopSequenceMatcher
{
    private readonly string[] _stops;
    private readonly System.Text.StringBuilder _pending = new();
    private int _emitted;

    public StopSequenceMatcher(IReadOnlyList<string> stops)
    {
        _stops = new string[stops.Count];
        for (var i = 0; i < stops.Count; i++) _stops[i] = stops[i];
    }

    /// <summary>Offset in the whole output where the stop sequence began, once one matched.</summary>
    public int? StopOffset { get; private set; }

    /// <summary>The stop sequence that matched (the earliest in the text), once one did.</summary>
    public string? MatchedStop { get; private set; }

    /// <summary>
    /// Adds generated text; returns the text now safe to emit (possibly empty). After a match, returns the text
    /// before the stop sequence and sets <see cref="StopOffset"/>.
    /// </summary>
    public string Add(string text)
    {
        if (StopOffset is not null) return string.Empty;
        if (_stops.Length == 0)
        {
            _emitted += text.Length;
            return text;
        }
        _pending.Append(text);
        var pending = _pending.ToString();
        var first = -1;
        string? matched = null;
        foreach (var stop in _stops)
        {
            var at = pending.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first))
            {
                first = at;
                matched = stop;
            }
        }
        if (first >= 0)
        {
            StopOffset = _emitted + first;
            MatchedStop = matched;
            _pending.Clear();
            _emitted += first;
            return pending[..first];
        }
        // Hold back the longest tail that is a proper prefix of some stop sequence.
        var hold = 0;
        foreach (var stop in _stops)
        {
            for (var len = Math.Min(stop.Length - 1, pending.Length); len > hold; len--)
            {
                if (string.CompareOrdinal(pending, pending.Length - len, stop, 0, len) == 0)
                {
                    hold = len;
                    break;
                }
            }
        }
        var safe = pending.Length - hold;
        _pending.Remove(0, safe);
        _emitted += safe;
        return safe == pending.Length ? pending : pending[..safe];
    }

    /// <summary>Whatever is still held back (the output ended without completing a stop sequence).</summary>
    public string Flush()
    {
        var rest = _pending.ToString();
        _pending.Clear();
        _emitted += rest.Length;
        return rest;
    }
}
