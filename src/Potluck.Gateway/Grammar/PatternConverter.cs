using System.Globalization;
using System.Text;

namespace Potluck.Gateway.Grammar;

/// <summary>
/// A JSON Schema "pattern" (ECMA-262 regex, a subset) → GBNF over the JSON-escaped characters of a string, so the
/// output decodes to a matching string. Supported: literals and escapes, ".", classes ([a-z], [^...], \d \w \s and
/// their negations), groups ((...), (?:...), (?&lt;name&gt;...)), alternation, quantifiers (* + ? {n} {n,} {n,m}, lazy ones as
/// greedy: the language is the same), ^ at the start and $ at the end. Unanchored ends allow any characters, as
/// JSON Schema's pattern is a search. Refused: backreferences, lookaround, \b, possessive quantifiers, anchors elsewhere.
/// Control characters are generated only as JSON escapes (\t \n \r) and never from negated classes.
/// </summary>
internal sealed class PatternConverter(string pattern, string path, int maxRepetition, string jsonCharRule)
{
    private int _at;
    private int _nodes;

    // "." as printable ASCII in its JSON form (see the "char" rule for why ASCII).
    private const string Dot = "([ !#-\\x5B\\x5D-~] | \"\\\\\\\"\" | \"\\\\\\\\\")";

    public string Convert()
    {
        var text = pattern;
        var start = 0;
        var end = text.Length;
        var anchoredStart = text.StartsWith('^');
        if (anchoredStart) start = 1;
        var anchoredEnd = end > start && text[end - 1] == '$' && !IsEscaped(text, end - 1);
        if (anchoredEnd) end--;
        var inner = text[start..end];
        var sub = new PatternConverter(inner, path, maxRepetition, jsonCharRule);
        var body = sub.ParseAlternation(topLevel: true);
        if (sub._at != inner.Length) throw sub.Fail($"unexpected '{inner[sub._at]}'");
        // "^a|b$" would anchor each side differently; the grammar reads it as "^(a|b)$" only when both ends agree.
        if (sub._hasTopLevelAlternation && anchoredStart != anchoredEnd) throw sub.Fail("alternation at the top level with only one end anchored; group it");
        if (sub._hasTopLevelAlternation) body = $"({body})";
        var parts = new List<string>();
        if (!anchoredStart) parts.Add($"{jsonCharRule}*");
        if (body.Length > 0) parts.Add(body);
        if (!anchoredEnd) parts.Add($"{jsonCharRule}*");
        return parts.Count == 0 ? "\"\"" : string.Join(" ", parts);
    }

    private bool _hasTopLevelAlternation;

    private static bool IsEscaped(string text, int index)
    {
        var backslashes = 0;
        for (var i = index - 1; i >= 0 && text[i] == '\\'; i--) backslashes++;
        return backslashes % 2 == 1;
    }

    private JsonSchemaGrammarException Fail(string why) =>
        new("pattern", path, $"The pattern cannot be used for structured output: {why} at position {_at}");

    private bool More => _at < pattern.Length;
    private char Peek => pattern[_at];

    // Whether the construct parsed last can match the empty string. Repeating such a part without bound ("(a?)*")
    // matches nothing more than a plain repetition would, but is ambiguous without bound (every extra empty pass is
    // another parse for llama.cpp's grammar stacks to track), so it is refused; the regex can always be rewritten.
    private bool _nullable;

    private string ParseAlternation(bool topLevel)
    {
        var alternatives = new List<string> { ParseSequence() };
        var nullable = _nullable;
        while (More && Peek == '|')
        {
            _at++;
            alternatives.Add(ParseSequence());
            nullable |= _nullable;
            if (topLevel) _hasTopLevelAlternation = true;
        }
        _nullable = nullable;
        if (alternatives.Count == 1) return alternatives[0];
        return string.Join(" | ", alternatives.Select(a => a.Length == 0 ? "\"\"" : a));
    }

    private string ParseSequence()
    {
        var items = new List<string>();
        var literal = new StringBuilder();
        void FlushLiteral()
        {
            if (literal.Length == 0) return;
            items.Add($"\"{literal}\"");
            literal.Clear();
        }
        var nullable = true;
        while (More && Peek != '|' && Peek != ')')
        {
            if (++_nodes > 4 * pattern.Length + 16) throw Fail("too complex");
            var atomStart = _at;
            var (atom, literalText) = ParseAtom();
            var quantified = More && Peek is '*' or '+' or '?' or '{' && (Peek != '{' || LooksLikeCount());
            if (literalText is not null && !quantified)
            {
                literal.Append(literalText);
                nullable = false;
                continue;
            }
            FlushLiteral();
            items.Add(quantified ? Quantify(atom, atomStart) : atom);
            nullable &= _nullable;
        }
        FlushLiteral();
        _nullable = nullable;
        return string.Join(" ", items);
    }

    private bool LooksLikeCount()
    {
        var i = _at + 1;
        var digits = 0;
        while (i < pattern.Length && char.IsAsciiDigit(pattern[i])) { i++; digits++; }
        return digits > 0 && i < pattern.Length && pattern[i] is '}' or ',';
    }

    private string Quantify(string atom, int atomStart)
    {
        var grouped = atom.Contains(' ') && !(atom.StartsWith('(') && atom.EndsWith(')')) ? $"({atom})" : atom;
        var atomNullable = _nullable;
        var unbounded = pattern[_at] is '*' or '+' || pattern[_at] == '{' && pattern.IndexOf('}', _at) is var close && close > 0 && pattern[close - 1] == ',';
        if (atomNullable && unbounded) throw Fail("an unbounded repetition of a part that can match the empty string");
        string result;
        switch (pattern[_at++])
        {
            case '*': result = grouped + "*"; _nullable = true; break;
            case '+': result = grouped + "+"; _nullable = false; break;
            case '?': result = grouped + "?"; _nullable = true; break;
            default:
                var min = ReadNumber();
                int? max = min;
                if (More && Peek == ',')
                {
                    _at++;
                    max = More && char.IsAsciiDigit(Peek) ? ReadNumber() : null;
                }
                if (!More || Peek != '}') throw Fail("unterminated {m,n}");
                _at++;
                if (max < min) throw Fail("{m,n} with n < m");
                if (min > maxRepetition || max > maxRepetition) throw Fail($"a repetition count above {maxRepetition}");
                result = max is null ? $"{grouped}{{{min},}}" : max == min ? $"{grouped}{{{min}}}" : $"{grouped}{{{min},{max}}}";
                _nullable = min == 0 || atomNullable;
                break;
        }
        if (More && Peek == '?') _at++; // lazy: same language
        else if (More && Peek == '+') throw Fail("a possessive quantifier");
        if (More && Peek is '*' or '+' or '?' or '{' && (Peek != '{' || LooksLikeCount())) throw Fail($"a quantifier after a quantifier (from position {atomStart})");
        return result;
    }

    private int ReadNumber()
    {
        var start = _at;
        while (More && char.IsAsciiDigit(Peek)) _at++;
        if (_at == start) throw Fail("a repetition without a count");
        if (_at - start > 6) throw Fail($"a repetition count above {maxRepetition}");
        return int.Parse(pattern.AsSpan(start, _at - start), NumberStyles.None, CultureInfo.InvariantCulture);
    }

    /// <returns>The atom's GBNF, and its JSON-escaped text when it is a single literal character.</returns>
    private (string Gbnf, string? Literal) ParseAtom()
    {
        _nullable = false;
        var c = pattern[_at++];
        switch (c)
        {
            case '(':
                if (More && Peek == '?')
                {
                    _at++;
                    if (More && Peek == ':') _at++;
                    else if (More && Peek == '<' && _at + 1 < pattern.Length && pattern[_at + 1] is not '=' and not '!')
                    {
                        var close = pattern.IndexOf('>', _at);
                        if (close < 0) throw Fail("an unterminated group name");
                        _at = close + 1;
                    }
                    else throw Fail("lookaround or an unsupported group kind");
                }
                var inner = ParseAlternation(topLevel: false);
                if (!More || Peek != ')') throw Fail("an unclosed group");
                _at++;
                // _nullable is the group's, from ParseAlternation.
                return (inner.Length == 0 ? "\"\"" : $"({inner})", null);
            case ')':
                throw Fail("an unmatched ')'");
            case '[':
                return (ParseClass(), null);
            case '.':
                return (Dot, null);
            case '^' or '$':
                throw Fail($"the anchor '{c}' anywhere but the pattern's start or end");
            case '*' or '+' or '?':
                throw Fail($"a quantifier '{c}' with nothing to repeat");
            case '{' when LooksLikeCountAt(_at - 1):
                throw Fail("a quantifier with nothing to repeat");
            case '\\':
                return ParseEscape();
            default:
                if (char.IsHighSurrogate(c) && More && char.IsLowSurrogate(Peek))
                {
                    var rune = char.ConvertToUtf32(c, pattern[_at++]);
                    return (LiteralGbnf(rune), LiteralText(rune));
                }
                return (LiteralGbnf(c), LiteralText(c));
        }
    }

    private bool LooksLikeCountAt(int index)
    {
        var saved = _at;
        _at = index;
        var result = LooksLikeCount();
        _at = saved;
        return result;
    }

    private (string, string?) ParseEscape()
    {
        if (!More) throw Fail("a trailing backslash");
        var c = pattern[_at++];
        switch (c)
        {
            case 'd': return ("[0-9]", null);
            case 'w': return ("[a-zA-Z0-9_]", null);
            case 's': return ("(\" \" | \"\\\\t\" | \"\\\\n\" | \"\\\\r\")", null);
            case 'D': return (ClassGbnf([('0', '9')], negated: true), null);
            case 'W': return (ClassGbnf([('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')], negated: true), null);
            case 'S': return (ClassGbnf([(' ', ' ')], negated: true), null);
            case 'b' or 'B': throw Fail("a word boundary (\\b, \\B)");
            case >= '1' and <= '9': throw Fail("a backreference");
            case 'k': throw Fail("a backreference");
            case 'p' or 'P': throw Fail("a Unicode property escape");
            default:
                var code = EscapedChar(c);
                return (LiteralGbnf(code), LiteralText(code));
        }
    }

    // The code point an escape like \n, \x41, \u00e9 or \. stands for.
    private int EscapedChar(char c)
    {
        switch (c)
        {
            case 't': return '\t';
            case 'n': return '\n';
            case 'r': return '\r';
            case 'f': return '\f';
            case 'v': return '\v';
            case '0': return 0;
            case 'x': return Hex(2);
            case 'u': return Hex(4);
            case 'c': throw Fail("a control escape (\\c)");
            default:
                if (char.IsAsciiLetterOrDigit(c)) throw Fail($"the unknown escape '\\{c}'");
                return c;
        }
    }

    private int Hex(int digits)
    {
        if (_at + digits > pattern.Length || !int.TryParse(pattern.AsSpan(_at, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var value))
            throw Fail("a bad \\x or \\u escape");
        _at += digits;
        return value;
    }

    private string ParseClass()
    {
        var negated = More && Peek == '^';
        if (negated) _at++;
        var ranges = new List<(int Low, int High)>();
        var first = true;
        while (true)
        {
            if (!More) throw Fail("an unclosed character class");
            var c = Peek;
            if (c == ']' && !first) { _at++; break; }
            first = false;
            var low = ClassChar(ranges);
            if (low < 0) continue;
            if (More && Peek == '-' && _at + 1 < pattern.Length && pattern[_at + 1] != ']')
            {
                _at++;
                var high = ClassChar(ranges);
                if (high < 0) throw Fail("a range ending in a class escape");
                if (high < low) throw Fail("a character range out of order");
                ranges.Add((low, high));
            }
            else ranges.Add((low, low));
        }
        if (ranges.Count == 0 && !negated) throw Fail("an empty character class");
        return ClassGbnf(ranges, negated);
    }

    // One class member; a class escape (\d, \w, \s) adds its ranges and returns -1.
    private int ClassChar(List<(int, int)> ranges)
    {
        var c = pattern[_at++];
        if (c == '[' && More && Peek == ':') throw Fail("a POSIX class");
        if (c != '\\')
        {
            if (char.IsHighSurrogate(c) && More && char.IsLowSurrogate(Peek)) return char.ConvertToUtf32(c, pattern[_at++]);
            return c;
        }
        if (!More) throw Fail("a trailing backslash");
        var e = pattern[_at++];
        switch (e)
        {
            case 'd': ranges.Add(('0', '9')); return -1;
            case 'w': ranges.Add(('a', 'z')); ranges.Add(('A', 'Z')); ranges.Add(('0', '9')); ranges.Add(('_', '_')); return -1;
            case 's': ranges.Add((' ', ' ')); ranges.Add(('\t', '\r')); return -1;
            case 'D' or 'W' or 'S': throw Fail("a negated class escape inside a class");
            case 'b': return '\b';
            default: return EscapedChar(e);
        }
    }

    // A class over decoded characters → GBNF over their JSON forms: printable ASCII as is; '"', '\', tab, newline
    // and return as escapes; other non-ASCII characters as \u escapes, listed (so a class may hold few of them);
    // a negated class yields printable ASCII only.
    private string ClassGbnf(List<(int Low, int High)> ranges, bool negated)
    {
        static bool Contains(List<(int Low, int High)> set, int c) => set.Exists(r => r.Low <= c && c <= r.High);
        var alternatives = new List<string>();
        var plain = new StringBuilder();
        var members = new List<(int Low, int High)>();
        if (!negated) members.AddRange(ranges);
        else
        {
            // The printable ASCII characters not in the class.
            var start = -1;
            for (var c = 0x20; c <= 0x7F; c++)
            {
                var keep = c < 0x7F && !Contains(ranges, c);
                if (keep && start < 0) start = c;
                if (!keep && start >= 0) { members.Add((start, c - 1)); start = -1; }
            }
        }
        var listed = 0;
        foreach (var (low, high) in members)
        {
            foreach (var (a, b) in Without(Math.Max(low, 0x20), Math.Min(high, 0x7E), '"', '\\'))
            {
                JsonSchemaGrammar.AppendEscaped(plain, a, inClass: true);
                if (b > a) { plain.Append('-'); JsonSchemaGrammar.AppendEscaped(plain, b, inClass: true); }
            }
            for (var c = Math.Max(low, 0x80); c <= high; c++)
            {
                if (c is >= 0xD800 and <= 0xDFFF) continue;
                if (++listed > 256) throw Fail("a class with more than 256 non-ASCII characters");
                alternatives.Add($"\"{LiteralText(c)}\"");
            }
        }
        if (plain.Length > 0) alternatives.Insert(0, $"[{plain}]");
        foreach (var (c, escape) in (ReadOnlySpan<(int, string)>)[('"', "\\\\\\\""), ('\\', "\\\\\\\\"), ('\t', "\\\\t"), ('\n', "\\\\n"), ('\r', "\\\\r")])
            if (members.Exists(r => r.Low <= c && c <= r.High) || negated && c is '"' or '\\' && !Contains(ranges, c))
                alternatives.Add($"\"{escape}\"");
        if (alternatives.Count == 0) throw Fail("a class with no character a JSON string can hold");
        return alternatives.Count == 1 ? alternatives[0] : $"({string.Join(" | ", alternatives)})";
    }

    private static IEnumerable<(int, int)> Without(int low, int high, params int[] excluded)
    {
        var start = low;
        for (var c = low; c <= high; c++)
        {
            if (Array.IndexOf(excluded, c) < 0) continue;
            if (c > start) yield return (start, c - 1);
            start = c + 1;
        }
        if (start <= high) yield return (start, high);
    }

    private static string LiteralGbnf(int codePoint) => $"\"{LiteralText(codePoint)}\"";

    // The GBNF-literal text that matches the JSON form of one decoded character.
    private static string LiteralText(int codePoint)
    {
        switch (codePoint)
        {
            case '"': return "\\\\\\\"";
            case '\\': return "\\\\\\\\";
            case '\n': return "\\\\n";
            case '\r': return "\\\\r";
            case '\t': return "\\\\t";
            case '\b': return "\\\\b";
            case '\f': return "\\\\f";
        }
        if (codePoint < 0x20) return "\\\\u00" + codePoint.ToString("x2", CultureInfo.InvariantCulture);
        if (codePoint >= 0x7F)
        {
            // Non-ASCII as its JSON \u escape (a surrogate pair above U+FFFF), lower-case hex as System.Text.Json writes.
            var utf16 = char.ConvertFromUtf32(codePoint);
            var escaped = new StringBuilder();
            foreach (var unit in utf16) escaped.Append("\\\\u").Append(((int)unit).ToString("x4", CultureInfo.InvariantCulture));
            return escaped.ToString();
        }
        var builder = new StringBuilder();
        JsonSchemaGrammar.AppendEscaped(builder, codePoint, inClass: false);
        return builder.ToString();
    }
}
