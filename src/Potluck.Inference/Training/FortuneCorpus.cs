using System.Text;

namespace Potluck.Inference.Training;

/// <summary>
/// Debian's `fortunes` data files (public-domain quotations, one file per topic, entries separated by a line
/// holding "%"), cleaned into plain text: overstrike sequences (x BACKSPACE y, old terminals' bold and
/// underline) become y, every control character except the newline is dropped, each line is trimmed and its
/// inner whitespace collapsed to one space.
/// </summary>
public sealed class FortuneCorpus
{
    /// <summary>Where Debian's `fortunes` package installs its data files.</summary>
    public const string DefaultDirectory = "/usr/share/games/fortunes";

    /// <summary>Entries longer than this (in characters) are dropped: they would not fit the training window.</summary>
    public const int MaxEntryCharacters = 1200;

    /// <summary>Every <see cref="HeldOutEvery"/>-th entry (in file order) is held out for evaluation.</summary>
    public const int HeldOutEvery = 20;

    /// <summary>Files that are pictures rather than prose.</summary>
    private static readonly HashSet<string> Excluded = new(StringComparer.Ordinal) { "ascii-art" };

    public IReadOnlyList<string> Training { get; }
    public IReadOnlyList<string> HeldOut { get; }
    public IReadOnlyList<string> Files { get; }

    private FortuneCorpus(List<string> training, List<string> heldOut, List<string> files)
    {
        Training = training;
        HeldOut = heldOut;
        Files = files;
    }

    public int TrainingCharacters => Training.Sum(e => e.Length);

    /// <summary>Reads every data file under <paramref name="directory"/> (names without an extension, in ordinal order).</summary>
    public static FortuneCorpus Load(string directory = DefaultDirectory)
    {
        if (!Directory.Exists(directory))
            throw new DirectoryNotFoundException(
                $"fortune corpus not found at {directory}: install Debian's package with `apt-get install fortunes`");
        var files = Directory.EnumerateFiles(directory)
            .Where(f => !Path.GetFileName(f).Contains('.') && !Excluded.Contains(Path.GetFileName(f)))
            .Where(f => (File.GetAttributes(f) & FileAttributes.ReparsePoint) == 0)
            .OrderBy(f => Path.GetFileName(f), StringComparer.Ordinal)
            .ToList();
        if (files.Count == 0) throw new FileNotFoundException($"no fortune data files under {directory}");
        var training = new List<string>();
        var heldOut = new List<string>();
        var index = 0;
        foreach (var file in files)
        {
            foreach (var entry in Entries(File.ReadAllText(file, Encoding.UTF8)))
            {
                if (entry.Length == 0 || entry.Length > MaxEntryCharacters) continue;
                (index++ % HeldOutEvery == HeldOutEvery - 1 ? heldOut : training).Add(entry);
            }
        }
        return new FortuneCorpus(training, heldOut, files.Select(Path.GetFileName).ToList()!);
    }

    /// <summary>Splits a fortune file into cleaned entries.</summary>
    public static IEnumerable<string> Entries(string fileText)
    {
        var current = new List<string>();
        foreach (var raw in fileText.Replace("\r\n", "\n").Split('\n'))
        {
            if (raw.TrimEnd() == "%")
            {
                if (Join(current) is { Length: > 0 } entry) yield return entry;
                current.Clear();
                continue;
            }
            current.Add(CleanLine(raw));
        }
        if (Join(current) is { Length: > 0 } last) yield return last;
    }

    private static string Join(List<string> lines) => string.Join('\n', lines).Trim('\n', ' ');

    /// <summary>Resolves overstrikes, drops control characters, trims and collapses whitespace.</summary>
    public static string CleanLine(string line)
    {
        var chars = new StringBuilder(line.Length);
        foreach (var c in line)
        {
            if (c == '\b')
            {
                // "x\by" prints y over x: keep the later character.
                if (chars.Length > 0) chars.Length--;
                continue;
            }
            chars.Append(c);
        }
        var result = new StringBuilder(chars.Length);
        var pendingSpace = false;
        foreach (var c in chars.ToString())
        {
            if (c == '\t' || c == ' ' || char.IsWhiteSpace(c))
            {
                pendingSpace = result.Length > 0;
                continue;
            }
            if (char.IsControl(c) || char.GetUnicodeCategory(c) is System.Globalization.UnicodeCategory.Format) continue;
            if (pendingSpace) result.Append(' ');
            pendingSpace = false;
            result.Append(c);
        }
        return result.ToString();
    }
}
