using Potluck.Reference;
using Potluck.Inference.Text;

namespace Potluck.Deploy.Tests;

/// <summary>What a single-node llama.cpp run (LLamaSharp) answers to a chat, greedily: the cluster must match it.</summary>
public static class GreedyReference
{
    /// <summary>The generated token ids (end-of-generation token included when reached) and their text.</summary>
    public static (List<int> Tokens, string Text) Chat(string modelPath, string userMessage, int maxTokens)
    {
        using var tokenizer = Tokenizer.Load(modelPath);
        var prompt = tokenizer.ApplyChatTemplate([("user", userMessage)], addAssistantPrompt: true);
        var tokens = tokenizer.Encode(prompt, addBos: tokenizer.AddBosByDefault, parseSpecial: true);
        using var reference = new LlamaCppReference(modelPath, contextSize: 512, threads: 2);
        var logits = new float[reference.VocabSize];
        reference.Evaluate(tokens, logits);
        var decoder = tokenizer.CreateStreamingDecoder();
        var text = new System.Text.StringBuilder();
        var generated = new List<int>();
        Span<int> next = stackalloc int[1];
        for (var i = 0; i < maxTokens; i++)
        {
            next[0] = LlamaCppReference.ArgMax(logits);
            generated.Add(next[0]);
            if (tokenizer.IsEndOfGeneration(next[0])) break;
            // The gateway streams text without control characters (ControlCharacters); compare like with like.
            text.Append(ControlCharacters.Strip(decoder.Add(next[0])));
            reference.Evaluate(next, logits);
        }
        return (generated, text.ToString());
    }
}
