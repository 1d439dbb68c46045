using Potluck.Inference.Models;
using Potluck.Inference.Text;

namespace Potluck.Inference.Training;

/// <summary>
/// The corpus as llama.cpp tokenizes it: every entry becomes one ChatML exchange (a user prompt, then the entry as
/// the assistant's answer), formatted exactly as the gateway's chat template renders a conversation, so the model
/// learns to answer a chat turn with a fortune and to end it with &lt;|im_end|&gt;.
/// </summary>
public sealed class DemoTokens
{
    /// <summary>The user turns entries are paired with (one per entry, chosen by the seed).</summary>
    public static readonly IReadOnlyList<string> Prompts =
    [
        "Tell me a fortune.", "Tell me a fortune.", "Tell me something.", "Say something wise.", "Give me a quote.",
        "Hello", "Hi!", "Any advice?", "Tell me a joke.", "What do you think?", "Say something.", "Share a thought.",
        "What is the meaning of life?", "Tell me a story.", "Cheer me up.", "What should I know?",
    ];

    /// <summary>Training stream: every training entry's tokens, concatenated.</summary>
    public int[] Training { get; }
    /// <summary>Held-out stream, and which of its positions are answer tokens (the entry's text and its &lt;|im_end|&gt;).</summary>
    public int[] HeldOut { get; }
    public bool[] HeldOutIsAnswer { get; }
    /// <summary>UTF-8 bytes of the held-out answers (what bits per byte divides by).</summary>
    public long HeldOutAnswerBytes { get; }

    private DemoTokens(int[] training, int[] heldOut, bool[] isAnswer, long bytes)
    {
        Training = training;
        HeldOut = heldOut;
        HeldOutIsAnswer = isAnswer;
        HeldOutAnswerBytes = bytes;
    }

    public static DemoTokens Build(Tokenizer tokenizer, FortuneCorpus corpus, int seed)
    {
        var rng = new SplitMix64(SplitMix64.Derive(seed, "prompts"));
        var training = new List<int>();
        foreach (var entry in corpus.Training) Append(tokenizer, entry, NextPrompt(ref rng), training, null);
        var heldOut = new List<int>();
        var isAnswer = new List<bool>();
        long bytes = 0;
        foreach (var entry in corpus.HeldOut)
        {
            Append(tokenizer, entry, NextPrompt(ref rng), heldOut, isAnswer);
            bytes += System.Text.Encoding.UTF8.GetByteCount(entry);
        }
        return new DemoTokens(training.ToArray(), heldOut.ToArray(), isAnswer.ToArray(), bytes);
    }

    private static string NextPrompt(ref SplitMix64 rng) => Prompts[(int)(rng.NextUInt64() % (ulong)Prompts.Count)];

    /// <summary>
    /// BOS, then "&lt;|im_start|&gt;user\n{prompt}&lt;|im_end|&gt;\n&lt;|im_start|&gt;assistant\n", the entry, "&lt;|im_end|&gt;\n".
    /// Special tokens split llama.cpp's tokenization into fragments and a newline is always a byte token, so
    /// tokenizing the three parts separately gives the tokens of the whole text.
    /// </summary>
    private static void Append(Tokenizer tokenizer, string entry, string prompt, List<int> tokens, List<bool>? isAnswer)
    {
        var head = tokenizer.Encode($"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", addBos: true, parseSpecial: true);
        var body = tokenizer.Encode(entry, addBos: false, parseSpecial: false);
        var tail = tokenizer.Encode("<|im_end|>\n", addBos: false, parseSpecial: true);
        tokens.AddRange(head);
        tokens.AddRange(body);
        tokens.AddRange(tail);
        if (isAnswer is null) return;
        isAnswer.AddRange(Enumerable.Repeat(false, head.Length));
        isAnswer.AddRange(Enumerable.Repeat(true, body.Length));
        // The <|im_end|> that ends the answer counts (stopping is part of answering); the newline after it does not.
        for (var i = 0; i < tail.Length; i++) isAnswer.Add(i == 0);
    }
}
