using System.Runtime.InteropServices;

namespace Potluck.Inference.Native;

/// <summary>
/// P/Invoke declarations for the pinned ggml 0.18.0 (llama.cpp c0c7e147) shipped by LLamaSharp.Backend.Cpu 0.30.0.
/// Every entry point was checked with `nm -D --defined-only` against that binary; struct fields are never read
/// from C#, only through accessor functions.
/// </summary>
internal static unsafe partial class Ggml
{
    internal const int PrecisionF32 = 10;
    internal const int KqMaskPad = 64;
    internal const int StatusSuccess = 0;

    [StructLayout(LayoutKind.Sequential)]
    internal struct InitParams
    {
        public nuint MemSize;
        public IntPtr MemBuffer;
        public byte NoAlloc;
    }

    // --- contexts and tensors (libggml-base) ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_init(InitParams p);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_free(IntPtr ctx);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_reset(IntPtr ctx);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern nuint ggml_tensor_overhead();
    [DllImport(NativeRuntime.GgmlBase)] internal static extern nuint ggml_graph_overhead_custom(nuint size, byte grads);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_new_graph_custom(IntPtr ctx, nuint size, byte grads);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_new_tensor_1d(IntPtr ctx, int type, long ne0);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_new_tensor_2d(IntPtr ctx, int type, long ne0, long ne1);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_new_tensor_4d(IntPtr ctx, int type, long ne0, long ne1, long ne2, long ne3);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_get_tensor(IntPtr ctx, [MarshalAs(UnmanagedType.LPUTF8Str)] string name);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_set_name(IntPtr tensor, [MarshalAs(UnmanagedType.LPUTF8Str)] string name);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_set_input(IntPtr tensor);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_set_output(IntPtr tensor);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern nuint ggml_nbytes(IntPtr tensor);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern long ggml_nelements(IntPtr tensor);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern int ggml_n_dims(IntPtr tensor);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern nuint ggml_row_size(int type, long ne);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern nuint ggml_type_size(int type);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern long ggml_blck_size(int type);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_type_name(int type);

    // --- graph operations (libggml-base) ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_view_1d(IntPtr ctx, IntPtr a, long ne0, nuint offset);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_view_2d(IntPtr ctx, IntPtr a, long ne0, long ne1, nuint nb1, nuint offset);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_view_3d(IntPtr ctx, IntPtr a, long ne0, long ne1, long ne2, nuint nb1, nuint nb2, nuint offset);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_reshape_2d(IntPtr ctx, IntPtr a, long ne0, long ne1);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_reshape_3d(IntPtr ctx, IntPtr a, long ne0, long ne1, long ne2);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_permute(IntPtr ctx, IntPtr a, int axis0, int axis1, int axis2, int axis3);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_cpy(IntPtr ctx, IntPtr a, IntPtr b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_cast(IntPtr ctx, IntPtr a, int type);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_concat(IntPtr ctx, IntPtr a, IntPtr b, int dim);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_mul_mat(IntPtr ctx, IntPtr a, IntPtr b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_add(IntPtr ctx, IntPtr a, IntPtr b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_mul(IntPtr ctx, IntPtr a, IntPtr b);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_rms_norm(IntPtr ctx, IntPtr a, float eps);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_get_rows(IntPtr ctx, IntPtr a, IntPtr rows);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_swiglu_split(IntPtr ctx, IntPtr gate, IntPtr up);

    [DllImport(NativeRuntime.GgmlBase)]
    internal static extern IntPtr ggml_rope_ext(
        IntPtr ctx, IntPtr a, IntPtr positions, IntPtr freqFactors, int nDims, int mode, int nCtxOrig,
        float freqBase, float freqScale, float extFactor, float attnFactor, float betaFast, float betaSlow);

    [DllImport(NativeRuntime.GgmlBase)]
    internal static extern IntPtr ggml_flash_attn_ext(
        IntPtr ctx, IntPtr q, IntPtr k, IntPtr v, IntPtr mask, float scale, float maxBias, float logitSoftcap);

    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_flash_attn_ext_set_prec(IntPtr tensor, int precision);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_build_forward_expand(IntPtr graph, IntPtr tensor);

    // --- allocation and backends (libggml-base / libggml-cpu) ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_gallocr_new(IntPtr bufferType);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_gallocr_free(IntPtr galloc);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern byte ggml_gallocr_alloc_graph(IntPtr galloc, IntPtr graph);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern nuint ggml_gallocr_get_buffer_size(IntPtr galloc, int bufferId);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_backend_alloc_ctx_tensors(IntPtr ctx, IntPtr backend);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern int ggml_backend_tensor_alloc(IntPtr buffer, IntPtr tensor, IntPtr address);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_backend_tensor_set(IntPtr tensor, void* data, nuint offset, nuint size);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_backend_tensor_get(IntPtr tensor, void* data, nuint offset, nuint size);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_backend_buffer_free(IntPtr buffer);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern nuint ggml_backend_buffer_get_size(IntPtr buffer);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_backend_buffer_get_base(IntPtr buffer);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_backend_buft_alloc_buffer(IntPtr bufferType, nuint size);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern nuint ggml_backend_buft_get_alignment(IntPtr bufferType);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_backend_buft_name(IntPtr bufferType);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_backend_cpu_buffer_from_ptr(IntPtr address, nuint size);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_backend_cpu_buffer_type();
    [DllImport(NativeRuntime.GgmlBase)] internal static extern int ggml_backend_graph_compute(IntPtr backend, IntPtr graph);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_backend_free(IntPtr backend);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_backend_reg_get_proc_address(IntPtr reg, [MarshalAs(UnmanagedType.LPUTF8Str)] string name);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_backend_reg_dev_get(IntPtr reg, nuint index);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern byte ggml_backend_dev_supports_op(IntPtr device, IntPtr op);
    [DllImport(NativeRuntime.GgmlCpu)] internal static extern IntPtr ggml_backend_cpu_init();
    [DllImport(NativeRuntime.GgmlCpu)] internal static extern void ggml_backend_cpu_set_n_threads(IntPtr backend, int threads);
    [DllImport(NativeRuntime.GgmlCpu)] internal static extern IntPtr ggml_backend_cpu_reg();

    internal static string? Utf8(IntPtr p) => p == IntPtr.Zero ? null : Marshal.PtrToStringUTF8(p);
}
