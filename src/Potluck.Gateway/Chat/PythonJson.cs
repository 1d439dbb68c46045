using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Potluck.Gateway.Chat;

/// <summary>
/// JSON text as the templates' <c>tojson</c> filter writes it (Python's json.dumps, ensure_ascii off): ", " and
/// ": " separators, or newlines and <c>indent</c> spaces when indented; keys in the order sent.
/// </summary>
public static class PythonJson
{
    public static string Write(JsonElement value, int? indent = null)
    {
        var text = new StringBuilder();
        Write(text, value, indent, 0);
        return text.ToString();
    }

    /// <summary>A JSON text (e.g. tool arguments) re-written in Python's style; text that is not JSON is written as a string.</summary>
    public static string Rewrite(string json, int? indent = null)
    {
        try
        {
            using var document = JsonDocument.Parse(json);
            return Write(document.RootElement, indent);
        }
        catch (JsonException)
        {
            return String(json);
        }
    }

    public static string String(string value)
    {
        var text = new StringBuilder(value.Length + 2);
        WriteString(text, value);
        return text.ToString();
    }

    private static void Write(StringBuilder text, JsonElement value, int? indent, int depth)
    {
        switch (value.ValueKind)
        {
            case JsonValueKind.Object:
            {
                var first = true;
                text.Append('{');
                foreach (var property in value.EnumerateObject())
                {
                    text.Append(first ? "" : indent is null ? ", " : ",");
                    NewLine(text, indent, depth + 1);
                    WriteString(text, property.Name);
                    text.Append(": ");
                    Write(text, property.Value, indent, depth + 1);
                    first = false;
                }
                if (!first) NewLine(text, indent, depth);
                text.Append('}');
                break;
            }
            case JsonValueKind.Array:
            {
                var first = true;
                text.Append('[');
                foreach (var item in value.EnumerateArray())
                {
                    text.Append(first ? "" : indent is null ? ", " : ",");
                    NewLine(text, indent, depth + 1);
                    Write(text, item, indent, depth + 1);
                    first = false;
                }
                if (!first) NewLine(text, indent, depth);
                text.Append(']');
                break;
            }
            case JsonValueKind.String:
                WriteString(text, value.GetString()!);
                break;
            case JsonValueKind.Number:
                // Python keeps integers as written and prints floats by repr; the raw text matches for what clients send.
                text.Append(value.GetRawText());
                break;
            case JsonValueKind.True:
                text.Append("true");
                break;
            case JsonValueKind.False:
                text.Append("false");
                break;
            default:
                text.Append("null");
                break;
        }
    }

    private static void NewLine(StringBuilder text, int? indent, int depth)
    {
        if (indent is not { } spaces) return;
        text.Append('\n').Append(' ', spaces * depth);
    }

    private static void WriteString(StringBuilder text, string value)
    {
        text.Append('"');
        foreach (var c in value)
        {
            switch (c)
            {
                case '"': text.Append("\\\""); break;
                case '\\': text.Append("\\\\"); break;
                case '\n': text.Append("\\n"); break;
                case '\r': text.Append("\\r"); break;
                case '\t': text.Append("\\t"); break;
                case '\b': text.Append("\\b"); break;
                case '\f': text.Append("\\f"); break;
                default:
                    if (c < 0x20) text.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else text.Append(c);
                    break;
            }
        }
        text.Append('"');
    }
}
