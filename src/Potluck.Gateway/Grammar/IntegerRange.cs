using System.Globalization;
using System.Text;

namespace Potluck.Gateway.Grammar;

/// <summary>GBNF for the decimal integers in [min, max] (either bound open), in JSON's form: no leading zeros, "-" for negatives.</summary>
internal static class IntegerRange
{
    /// <summary>Largest bound magnitude; numbers have at most 16 digits, as in llama.cpp's integer rule.</summary>
    public const long Largest = 999_999_999_999_999;
    private const int MaxDigits = 16;

    public static string Gbnf(long? min, long? max)
    {
        var alternatives = new List<string>();
        // Negative part: -b .. -a with 1 <= a <= b.
        if (min is null || min < 0)
        {
            long a = max is { } hiNeg && hiNeg < 0 ? -hiNeg : 1;
            long? b = min is { } lo ? -lo : null;
            if (b is null || a <= b) alternatives.Add($"\"-\" ({NonNegative(a, b)})");
        }
        if (max is null || max >= 0)
            alternatives.Add(NonNegative(Math.Max(min ?? 0, 0), max));
        return string.Join(" | ", alternatives);
    }

    // Integers in [lo, hi] (hi null: up to MaxDigits digits), split by digit count.
    private static string NonNegative(long lo, long? hi)
    {
        var parts = new List<string>();
        var loDigits = Digits(lo);
        var hiDigits = hi is { } h ? Digits(h) : MaxDigits;
        for (var digits = loDigits; digits <= hiDigits; digits++)
        {
            var from = digits == loDigits ? lo : Pow10(digits - 1);
            var to = hi is { } top && digits == hiDigits ? top : Pow10(digits) - 1;
            if (hi is null && digits > loDigits)
            {
                // Every longer number: one rule for all of them.
                parts.Add(digits == MaxDigits ? "[1-9] [0-9]{15}" : $"[1-9] [0-9]{{{digits - 1},{MaxDigits - 1}}}");
                break;
            }
            if (from > to) continue;
            parts.Add(SameLength(from.ToString(CultureInfo.InvariantCulture), to.ToString(CultureInfo.InvariantCulture)));
        }
        return string.Join(" | ", parts);
    }

    // Strings of one length between a and b (digit-wise, leading zeros allowed below the top level).
    private static string SameLength(string a, string b)
    {
        if (a.Length == 1) return a == b ? $"\"{a}\"" : $"[{a}-{b}]";
        if (a[0] == b[0]) return $"\"{a[0]}\" {Paren(SameLength(a[1..], b[1..]))}";
        var rest = a.Length - 1;
        var parts = new List<string>();
        var low = a[0];
        var high = b[0];
        if (a[1..] != new string('0', rest))
        {
            parts.Add($"\"{a[0]}\" {Paren(SameLength(a[1..], new string('9', rest)))}");
            low++;
        }
        var highFull = b[1..] == new string('9', rest);
        if (!highFull) high--;
        if (low <= high) parts.Add($"{(low == high ? $"\"{low}\"" : $"[{low}-{high}]")} {AnyDigits(rest)}");
        if (!highFull) parts.Add($"\"{b[0]}\" {Paren(SameLength(new string('0', rest), b[1..]))}");
        return string.Join(" | ", parts);
    }

    private static string AnyDigits(int count) => count == 1 ? "[0-9]" : $"[0-9]{{{count}}}";

    private static string Paren(string rule) => rule.Contains('|') ? $"({rule})" : rule;

    private static int Digits(long value) => value.ToString(CultureInfo.InvariantCulture).Length;

    private static long Pow10(int exponent)
    {
        long result = 1;
        for (var i = 0; i < exponent; i++) result *= 10;
        return result;
    }
}
