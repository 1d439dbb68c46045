using System.Runtime.InteropServices;

namespace Potluck.Inference.Native;

/// <summary>
/// The graph operations the model families beyond Llama use (norms, GLU variants, routing, expert matmuls,
/// attention sinks). Signatures follow ggml.h at llama.cpp b10221 (ggml 0.18.0); each symbol was checked with
/// `nm -D --defined-only` against the shipped libggml-base.so.
/// </summary>
internal static partial class Ggml
{
    internal const int SortAscending = 0;
    internal const int SortDescending = 1;

    // --- shape ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_reshape_1d(IntPtr ctx, IntPtr a, long ne0);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_reshape_4d(IntPtr ctx, IntPtr a, long ne0, long ne1, long ne2, long ne3);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_view_4d(IntPtr ctx, IntPtr a, long ne0, long ne1, long ne2, long ne3, nuint nb1, nuint nb2, nuint nb3, nuint offset);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_cont(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_cont_2d(IntPtr ctx, IntPtr a, long ne0, long ne1);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_cont_3d(IntPtr ctx, IntPtr a, long ne0, long ne1, long ne2);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_transpose(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_repeat(IntPtr ctx, IntPtr a, IntPtr b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_repeat_4d(IntPtr ctx, IntPtr a, long ne0, long ne1, long ne2, long ne3);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_fill(IntPtr ctx, IntPtr a, float c);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_set_rows(IntPtr ctx, IntPtr a, IntPtr b, IntPtr c);

    // --- elementwise ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_sub(IntPtr ctx, IntPtr a, IntPtr b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_div(IntPtr ctx, IntPtr a, IntPtr b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_add1(IntPtr ctx, IntPtr a, IntPtr b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_scale(IntPtr ctx, IntPtr a, float s);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_scale_bias(IntPtr ctx, IntPtr a, float s, float b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_clamp(IntPtr ctx, IntPtr a, float min, float max);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_sqrt(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_exp(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_tanh(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_sigmoid(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_softplus(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_silu(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_gelu(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_gelu_erf(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_norm(IntPtr ctx, IntPtr a, float eps);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_sum_rows(IntPtr ctx, IntPtr a);

    // --- gated linear units ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_swiglu(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_geglu(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_geglu_split(IntPtr ctx, IntPtr a, IntPtr b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_swiglu_oai(IntPtr ctx, IntPtr a, IntPtr b, float alpha, float limit);

    // --- routing and experts ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_soft_max(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_soft_max_ext(IntPtr ctx, IntPtr a, IntPtr mask, float scale, float maxBias);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_soft_max_add_sinks(IntPtr a, IntPtr sinks);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_argsort(IntPtr ctx, IntPtr a, int order);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_argsort_top_k(IntPtr ctx, IntPtr a, int k);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_top_k(IntPtr ctx, IntPtr a, int k);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_mul_mat_id(IntPtr ctx, IntPtr experts, IntPtr b, IntPtr ids);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_add_id(IntPtr ctx, IntPtr a, IntPtr b, IntPtr ids);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_mul_mat_set_prec(IntPtr a, int precision);

    // --- attention extras ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_flash_attn_ext_add_sinks(IntPtr a, IntPtr sinks);
}
