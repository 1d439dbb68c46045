using System.Runtime.InteropServices;
using LLama.Native;

namespace Potluck.Inference.Native;

/// <summary>
/// llama.cpp's grammar sampler held directly. LLamaSharp's AddGrammar adds whatever llama_sampler_init_grammar
/// returns to a chain, NULL included (a refused grammar then crashes on first use), and passes NULL for an empty
/// trigger-token list, which llama.cpp asserts on; so the few calls are imported here and the NULL is checked.
/// </summary>
internal sealed class LlamaGrammarSampler : SafeHandle
{
    private LlamaGrammarSampler() : base(IntPtr.Zero, ownsHandle: true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Builds the sampler, or returns null when llama.cpp refuses the grammar (it logs why).</summary>
    public static unsafe LlamaGrammarSampler? Create(SafeLlamaModelHandle model, string gbnf, string root,
        IReadOnlyList<string> triggerPatterns, IReadOnlyList<int> triggerTokens, bool lazy)
    {
        NativeRuntime.EnsureLoaded();
        var vocab = llama_model_get_vocab(model);
        IntPtr sampler;
        if (!lazy)
        {
            sampler = llama_sampler_init_grammar(vocab, gbnf, root);
        }
        else
        {
            var patterns = new IntPtr[Math.Max(1, triggerPatterns.Count)];
            var tokens = new int[Math.Max(1, triggerTokens.Count)];
            for (var i = 0; i < triggerTokens.Count; i++) tokens[i] = triggerTokens[i];
            try
            {
                for (var i = 0; i < triggerPatterns.Count; i++) patterns[i] = Marshal.StringToCoTaskMemUTF8(triggerPatterns[i]);
                // Never NULL arrays: llama.cpp asserts on a NULL even with a zero count.
                fixed (IntPtr* patternsPtr = patterns)
                fixed (int* tokensPtr = tokens)
                {
                    sampler = llama_sampler_init_grammar_lazy_patterns(vocab, gbnf, root,
                        patternsPtr, (nuint)triggerPatterns.Count, tokensPtr, (nuint)triggerTokens.Count);
                }
            }
            finally
            {
                foreach (var pattern in patterns)
                    if (pattern != IntPtr.Zero) Marshal.FreeCoTaskMem(pattern);
            }
        }
        if (sampler == IntPtr.Zero) return null;
        var result = new LlamaGrammarSampler();
        result.SetHandle(sampler);
        return result;
    }

    public void Apply(ref LLamaTokenDataArrayNative candidates) => llama_sampler_apply(this, ref candidates);

    public void Accept(int token) => llama_sampler_accept(this, token);

    public void Reset() => llama_sampler_reset(this);

    protected override bool ReleaseHandle()
    {
        llama_sampler_free(handle);
        return true;
    }

    [DllImport(NativeRuntime.Llama)]
    private static extern IntPtr llama_model_get_vocab(SafeLlamaModelHandle model);

    [DllImport(NativeRuntime.Llama)]
    private static extern IntPtr llama_sampler_init_grammar(IntPtr vocab,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string grammar, [MarshalAs(UnmanagedType.LPUTF8Str)] string root);

    [DllImport(NativeRuntime.Llama)]
    private static extern unsafe IntPtr llama_sampler_init_grammar_lazy_patterns(IntPtr vocab,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string grammar, [MarshalAs(UnmanagedType.LPUTF8Str)] string root,
        IntPtr* triggerPatterns, nuint patternCount, int* triggerTokens, nuint tokenCount);

    [DllImport(NativeRuntime.Llama)]
    private static extern void llama_sampler_apply(LlamaGrammarSampler sampler, ref LLamaTokenDataArrayNative candidates);

    [DllImport(NativeRuntime.Llama)]
    private static extern void llama_sampler_accept(LlamaGrammarSampler sampler, int token);

    [DllImport(NativeRuntime.Llama)]
    private static extern void llama_sampler_reset(LlamaGrammarSampler sampler);

    [DllImport(NativeRuntime.Llama)]
    private static extern void llama_sampler_free(IntPtr sampler);
}
