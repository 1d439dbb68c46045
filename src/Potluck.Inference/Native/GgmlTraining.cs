using System.Runtime.InteropServices;

namespace Potluck.Inference.Native;

/// <summary>
/// P/Invoke declarations for training with ggml's optimizer (ggml-opt) and the backend scheduler it runs on, in the
/// natives LLamaSharp.Backend.Cpu 0.30.0 ships (llama.cpp b10221). Entry points were checked with
/// `nm -D --defined-only libggml-base.so`; struct layouts against the binary (see docs/demo-model.md).
/// </summary>
internal static unsafe class GgmlTraining
{
    /// <summary>GGML_OPT_LOSS_TYPE_CROSS_ENTROPY.</summary>
    internal const int LossCrossEntropy = 2;
    /// <summary>GGML_OPT_BUILD_TYPE_OPT: forward, backward and optimizer step.</summary>
    internal const int BuildTypeOpt = 30;
    /// <summary>GGML_OPT_OPTIMIZER_TYPE_ADAMW.</summary>
    internal const int OptimizerAdamW = 0;

    /// <summary>struct ggml_opt_params at b10221: 72 bytes (pointers at 0/8/16/24, ints at 32/36/40, callback at 48/56, optimizer at 64).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct OptParams
    {
        public IntPtr Scheduler;
        public IntPtr ContextCompute;
        public IntPtr Inputs;
        public IntPtr Outputs;
        public int LossType;
        public int BuildType;
        public int OptPeriod;
        private int _padding;
        public IntPtr GetOptimizerParams;
        public IntPtr GetOptimizerParamsUserData;
        public int Optimizer;
        private int _tailPadding;
    }

    /// <summary>struct ggml_opt_optimizer_params: AdamW {alpha, beta1, beta2, eps, wd} then SGD {alpha, wd}; 7 floats.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct OptimizerParams
    {
        public float AdamAlpha;
        public float AdamBeta1;
        public float AdamBeta2;
        public float AdamEps;
        public float AdamWeightDecay;
        public float SgdAlpha;
        public float SgdWeightDecay;
    }

    // --- extra graph operations with a CPU backward pass ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_cont(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_reshape_4d(IntPtr ctx, IntPtr a, long ne0, long ne1, long ne2, long ne3);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_soft_max_ext(IntPtr ctx, IntPtr a, IntPtr mask, float scale, float maxBias);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_silu(IntPtr ctx, IntPtr a);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_set_param(IntPtr tensor);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_dup_tensor(IntPtr ctx, IntPtr src);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_get_first_tensor(IntPtr ctx);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_get_next_tensor(IntPtr ctx, IntPtr tensor);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_get_name(IntPtr tensor);

    // --- backend scheduler ---
    [DllImport(NativeRuntime.GgmlBase)]
    internal static extern IntPtr ggml_backend_sched_new(IntPtr* backends, IntPtr* bufferTypes, int backendCount, nuint graphSize,
        [MarshalAs(UnmanagedType.U1)] bool parallel, [MarshalAs(UnmanagedType.U1)] bool opOffload);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_backend_sched_free(IntPtr sched);

    // --- optimizer ---
    [DllImport(NativeRuntime.GgmlBase)] internal static extern OptParams ggml_opt_default_params(IntPtr sched, int lossType);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_opt_init(OptParams parameters);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_opt_free(IntPtr opt);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_opt_labels(IntPtr opt);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_opt_loss(IntPtr opt);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_opt_alloc(IntPtr opt, [MarshalAs(UnmanagedType.U1)] bool backward);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_opt_eval(IntPtr opt, IntPtr result);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern IntPtr ggml_opt_result_init();
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_opt_result_free(IntPtr result);
    [DllImport(NativeRuntime.GgmlBase)] internal static extern void ggml_opt_result_reset(IntPtr result);
}
