using System.Runtime.CompilerServices;
using System.Text;

namespace Potluck.Cli.Chat;

/// <summary>
/// Minimal text/event-stream reader (the WHATWG rules OpenAI-style streams use): yields the data of each
/// event, joining multi-line `data:` fields with '\n'; comments and other fields are skipped.
/// </summary>
public static class ServerSentEvents
{
    public static async IAsyncEnumerable<string> ReadDataAsync(Stream stream, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        using var reader = new StreamReader(stream, Encoding.UTF8, detectEncodingFromByteOrderMarks: false, bufferSize: 4096, leaveOpen: true);
        var data = new StringBuilder();
        var hasData = false;
        while (true)
        {
            var line = await reader.ReadLineAsync(cancellationToken);
            if (line is null)
            {
                // A stream that ends without the final blank line still delivers its last event.
                if (hasData) yield return data.ToString();
                yield break;
            }
            if (line.Length == 0)
            {
                if (hasData) yield return data.ToString();
                data.Clear();
                hasData = false;
                continue;
            }
            if (line[0] == ':') continue;
            var colon = line.IndexOf(':');
            var field = colon < 0 ? line : line[..colon];
            if (field != "data") continue;
            var value = colon < 0 ? "" : line[(colon + 1)..];
            if (value.StartsWith(' ')) value = value[1..];
            if (hasData) data.Append('\n');
            data.Append(value);
            hasData = true;
        }
    }
}
