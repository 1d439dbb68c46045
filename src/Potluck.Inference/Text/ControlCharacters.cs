using System.Text;

namespace Potluck.Inference.Text;

/// <summary>
/// Removes control characters from generated text before anyone sees it. A model can emit any byte token
/// (ESC, BACKSPACE, CR, BEL...), and such bytes rewrite a terminal's layout. Kept: newline and tab, which
/// text legitimately contains. Removed: every other C0 control, DEL, and the C1 controls U+0080..U+009F.
/// </summary>
public static class ControlCharacters
{
    /// <summary>True for a character <see cref="Strip"/> removes.</summary>
    public static bool IsUnsafe(char c) => char.IsControl(c) && c is not ('\n' or '\t');

    /// <summary><paramref name="text"/> without unsafe control characters (the same instance when it has none).</summary>
    public static string Strip(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var first = -1;
        for (var i = 0; i < text.Length; i++)
        {
            if (!IsUnsafe(text[i])) continue;
            first = i;
            break;
        }
        if (first < 0) return text;
        var kept = new StringBuilder(text.Length);
        kept.Append(text, 0, first);
        for (var i = first + 1; i < text.Length; i++)
            if (!IsUnsafe(text[i])) kept.Append(text[i]);
        return kept.ToString();
    }
}
