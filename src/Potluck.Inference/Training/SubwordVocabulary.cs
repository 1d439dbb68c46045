using System.Text;

namespace Potluck.Inference.Training;

/// <summary>
/// A SentencePiece-style ("llama" tokenizer model) subword vocabulary learned from a corpus by byte-pair merging:
/// control tokens, the 256 byte-fallback tokens, ChatML markers, the corpus's common characters, then merged
/// pieces. Spaces are written as "▁" (U+2581) and start a word; no piece crosses a word start or a newline.
/// llama.cpp's SPM tokenizer merges adjacent pieces by descending score, so each merged piece scores by its
/// merge rank (earlier merges first), which replays the merges in the order they were learned.
/// </summary>
public sealed class SubwordVocabulary
{
    public const string SpaceMark = "\u2581";
    public const int Unknown = 0;
    public const int Bos = 1;
    public const int Eos = 2;
    public const int FirstByte = 3;
    public const int ImStart = FirstByte + 256;
    public const int ImEnd = ImStart + 1;
    /// <summary>Id of the first learned (normal) piece.</summary>
    public const int FirstPiece = ImEnd + 1;

    /// <summary>Characters seen fewer times than this fall back to byte tokens.</summary>
    public const int MinCharacterCount = 20;

    private const int TypeNormal = 1, TypeUnknown = 2, TypeControl = 3, TypeByte = 6;

    public IReadOnlyList<string> Tokens { get; }
    public IReadOnlyList<float> Scores { get; }
    public IReadOnlyList<int> Types { get; }
    public int Size => Tokens.Count;

    private SubwordVocabulary(List<string> tokens, List<float> scores, List<int> types)
    {
        Tokens = tokens;
        Scores = scores;
        Types = types;
    }

    /// <summary>Learns a vocabulary of exactly <paramref name="size"/> entries from <paramref name="texts"/>; deterministic.</summary>
    public static SubwordVocabulary Learn(IEnumerable<string> texts, int size)
    {
        // Words: a run of non-space characters, with the space before it (as ▁) attached.
        var wordCounts = new Dictionary<string, long>(StringComparer.Ordinal);
        var charCounts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var text in texts)
        {
            foreach (var line in text.Split('\n'))
            {
                var parts = line.Split(' ');
                for (var i = 0; i < parts.Length; i++)
                {
                    var word = (i > 0 ? SpaceMark : "") + parts[i];
                    if (word.Length == 0) continue;
                    wordCounts[word] = wordCounts.GetValueOrDefault(word) + 1;
                }
            }
        }
        foreach (var (word, count) in wordCounts)
            foreach (var ch in Characters(word))
                charCounts[ch] = charCounts.GetValueOrDefault(ch) + count;

        var tokens = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<int> { TypeUnknown, TypeControl, TypeControl };
        for (var b = 0; b < 256; b++)
        {
            tokens.Add($"<0x{b:X2}>");
            types.Add(TypeByte);
        }
        tokens.Add("<|im_start|>");
        types.Add(TypeControl);
        tokens.Add("<|im_end|>");
        types.Add(TypeControl);
        var scores = Enumerable.Repeat(0f, tokens.Count).ToList();

        var alphabet = charCounts.Where(kv => kv.Value >= MinCharacterCount)
            .OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => kv.Key).ToList();
        if (tokens.Count + alphabet.Count > size)
            throw new ArgumentOutOfRangeException(nameof(size), $"a vocabulary of {size} cannot hold the corpus's {alphabet.Count} characters");
        var pieceIds = new Dictionary<string, int>(StringComparer.Ordinal);
        var pieces = new List<string>();
        foreach (var ch in alphabet)
        {
            pieceIds[ch] = pieces.Count;
            pieces.Add(ch);
        }

        // Each distinct word as a symbol sequence; -1 marks a character outside the alphabet (never merged).
        var words = wordCounts.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => (Symbols: Characters(kv.Key).Select(c => pieceIds.TryGetValue(c, out var id) ? id : -1).ToList(), Count: kv.Value))
            .ToList();
        var pairCounts = new Dictionary<long, long>();
        var pairWords = new Dictionary<long, HashSet<int>>();
        for (var w = 0; w < words.Count; w++) AddPairs(words, w, +1, pairCounts, pairWords);

        var merges = new List<string>();
        var mergesWanted = size - tokens.Count - alphabet.Count;
        while (merges.Count < mergesWanted && pairCounts.Count > 0)
        {
            long best = 0, bestCount = 0;
            string? bestText = null;
            foreach (var (pair, count) in pairCounts)
            {
                if (count < bestCount) continue;
                var text = pieces[(int)(pair >> 32)] + pieces[(int)(pair & 0xFFFFFFFF)];
                if (count > bestCount || string.CompareOrdinal(text, bestText) < 0)
                {
                    (best, bestCount, bestText) = (pair, count, text);
                }
            }
            if (bestCount < 2 || bestText is null) break;
            var left = (int)(best >> 32);
            var right = (int)(best & 0xFFFFFFFF);
            if (!pieceIds.TryGetValue(bestText, out var merged))
            {
                merged = pieces.Count;
                pieces.Add(bestText);
                pieceIds[bestText] = merged;
                merges.Add(bestText);
            }
            foreach (var w in pairWords[best].Order().ToList())
            {
                AddPairs(words, w, -1, pairCounts, pairWords);
                var symbols = words[w].Symbols;
                for (var i = 0; i + 1 < symbols.Count; i++)
                {
                    if (symbols[i] != left || symbols[i + 1] != right) continue;
                    symbols[i] = merged;
                    symbols.RemoveAt(i + 1);
                }
                AddPairs(words, w, +1, pairCounts, pairWords);
            }
            pairCounts.Remove(best);
            pairWords.Remove(best);
        }

        // Merged pieces score by merge rank (higher first); characters score below every merge.
        for (var i = 0; i < merges.Count; i++)
        {
            tokens.Add(merges[i]);
            types.Add(TypeNormal);
            scores.Add(-i);
        }
        for (var i = 0; i < alphabet.Count; i++)
        {
            tokens.Add(alphabet[i]);
            types.Add(TypeNormal);
            scores.Add(-(merges.Count + i));
        }
        // A corpus too small for every merge pads with unused byte-like placeholders so the size stays fixed.
        for (var i = 0; tokens.Count < size; i++)
        {
            tokens.Add($"<unused{i}>");
            types.Add(5); // user-defined: never produced by tokenizing ordinary text
            scores.Add(-1e9f);
        }
        return new SubwordVocabulary(tokens, scores, types);
    }

    private static void AddPairs(List<(List<int> Symbols, long Count)> words, int w, int sign,
        Dictionary<long, long> pairCounts, Dictionary<long, HashSet<int>> pairWords)
    {
        var (symbols, count) = words[w];
        for (var i = 0; i + 1 < symbols.Count; i++)
        {
            var a = symbols[i];
            var b = symbols[i + 1];
            // Pieces never start a word mid-piece: a ▁ may only begin a piece.
            if (a < 0 || b < 0) continue;
            var key = ((long)a << 32) | (uint)b;
            var updated = pairCounts.GetValueOrDefault(key) + sign * count;
            if (updated <= 0)
            {
                pairCounts.Remove(key);
                pairWords.Remove(key);
            }
            else
            {
                pairCounts[key] = updated;
                if (sign > 0)
                {
                    if (!pairWords.TryGetValue(key, out var set)) pairWords[key] = set = [];
                    set.Add(w);
                }
            }
        }
    }

    /// <summary>The text elements of a word as strings (surrogate pairs kept together).</summary>
    private static IEnumerable<string> Characters(string word)
    {
        for (var i = 0; i < word.Length; i++)
        {
            if (char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]))
            {
                yield return word.Substring(i, 2);
                i++;
            }
            else
            {
                yield return word[i].ToString();
            }
        }
    }

    /// <summary>The vocabulary stored in a GGUF file this class wrote (the trained demo model, for instance).</summary>
    public static SubwordVocabulary FromGguf(Gguf.GgufFile file)
    {
        if (file.Metadata.GetValueOrDefault("tokenizer.ggml.tokens") is not string[] tokens
            || file.Metadata.GetValueOrDefault("tokenizer.ggml.scores") is not float[] scores
            || file.Metadata.GetValueOrDefault("tokenizer.ggml.token_type") is not int[] types
            || scores.Length != tokens.Length || types.Length != tokens.Length)
            throw new GgufFormatException(file.Path, "no llama tokenizer vocabulary (tokens, scores, token types)");
        return new SubwordVocabulary([.. tokens], [.. scores], [.. types]);
    }

    /// <summary>Writes the tokenizer keys llama.cpp's "llama" (SentencePiece) vocabulary loader reads.</summary>
    public void WriteTo(Models.GgufWriter writer, string chatTemplate)
    {
        writer.Add("tokenizer.ggml.model", "llama")
              .Add("tokenizer.ggml.tokens", Tokens.ToArray())
              .Add("tokenizer.ggml.scores", Scores.ToArray())
              .Add("tokenizer.ggml.token_type", Types.ToArray())
              .Add("tokenizer.ggml.bos_token_id", (uint)Bos)
              .Add("tokenizer.ggml.eos_token_id", (uint)Eos)
              .Add("tokenizer.ggml.unknown_token_id", (uint)Unknown)
              .Add("tokenizer.ggml.add_bos_token", true)
              .Add("tokenizer.ggml.add_eos_token", false)
              .Add("tokenizer.ggml.add_space_prefix", false)
              .Add("tokenizer.chat_template", chatTemplate);
    }

    /// <summary>A stable digest of the vocabulary (for logs and reproducibility checks).</summary>
    public string Digest() => Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(
        Encoding.UTF8.GetBytes(string.Join('\u0001', Tokens)))).Substring(0, 16);
}
