using System.Globalization;

namespace Potluck.Cluster;

/// <summary>
/// The one layer notation: layers are always a half-open range, typed as "4:8" (`--layers 4:8`) and shown as "[4, 8)"
/// in every message, log line, page and document. The old "4-8" input (it also meant [4, 8), but read like an
/// inclusive range) is still accepted, with a warning that says what it means.
/// </summary>
public static class LayerRange
{
    /// <summary>What every message and page shows: "[4, 8)".</summary>
    public static string Format(int start, int end) => $"[{start.ToString(CultureInfo.InvariantCulture)}, {end.ToString(CultureInfo.InvariantCulture)})";

    /// <summary>What `--layers` takes for the same layers: "4:8", so a hint can be pasted as given.</summary>
    public static string Input(int start, int end) => $"{start.ToString(CultureInfo.InvariantCulture)}:{end.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>The usage rule every parse error quotes.</summary>
    public const string Rule = "A:B with 0 <= A < B, meaning layers [A, B) (e.g. 0:4 for the first four)";

    /// <summary>
    /// Parses "A:B" (or the old "A-B", then <paramref name="legacy"/> is true) into [A, B) with 0 &lt;= A &lt; B.
    /// Digits only: "-1:3", " 2:4" or "4:8)" never parse.
    /// </summary>
    public static bool TryParse(string text, out int start, out int end, out bool legacy)
    {
        start = end = 0;
        legacy = false;
        var separator = text.IndexOf(':');
        if (separator < 0)
        {
            separator = text.IndexOf('-');
            legacy = separator > 0;
        }
        if (separator <= 0) return false;
        return int.TryParse(text.AsSpan(0, separator), NumberStyles.None, CultureInfo.InvariantCulture, out start)
            && int.TryParse(text.AsSpan(separator + 1), NumberStyles.None, CultureInfo.InvariantCulture, out end)
            && end > start;
    }

    /// <summary>The warning for an old "A-B" value: what it means and how to write it now.</summary>
    public static string LegacyWarning(string what, string text, int start, int end) =>
        $"{what} '{text}' uses the old A-B form; it means layers {Format(start, end)} (layer {end} not included); write {Input(start, end)}";
}
