using System.Runtime.InteropServices;

namespace Potluck.Inference.Native;

/// <summary>Owns a ggml_context (tensor metadata; data lives in backend buffers).</summary>
internal sealed class GgmlContextHandle : SafeHandle
{
    private GgmlContextHandle() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>A metadata-only context sized for <paramref name="maxTensors"/> tensors, optionally in caller memory.</summary>
    public static GgmlContextHandle Create(int maxTensors, IntPtr memory = default, nuint memorySize = 0, int graphNodes = 0)
    {
        var size = memory != IntPtr.Zero
            ? memorySize
            : Ggml.ggml_tensor_overhead() * (nuint)maxTensors
              + (graphNodes > 0 ? Ggml.ggml_graph_overhead_custom((nuint)graphNodes, 0) : 0);
        var ctx = Ggml.ggml_init(new Ggml.InitParams { MemSize = size, MemBuffer = memory, NoAlloc = 1 });
        if (ctx == IntPtr.Zero) throw new OutOfMemoryException("ggml_init failed to create a context");
        var h = new GgmlContextHandle();
        h.SetHandle(ctx);
        return h;
    }

    protected override bool ReleaseHandle()
    {
        Ggml.ggml_free(handle);
        return true;
    }
}

/// <summary>Owns a ggml CPU backend instance (its thread settings and work buffer).</summary>
internal sealed class CpuBackendHandle : SafeHandle
{
    private CpuBackendHandle() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public static CpuBackendHandle Create(int threads)
    {
        var backend = Ggml.ggml_backend_cpu_init();
        if (backend == IntPtr.Zero) throw new InvalidOperationException("ggml_backend_cpu_init failed");
        Ggml.ggml_backend_cpu_set_n_threads(backend, Math.Max(1, threads));
        var h = new CpuBackendHandle();
        h.SetHandle(backend);
        return h;
    }

    protected override bool ReleaseHandle()
    {
        Ggml.ggml_backend_free(handle);
        return true;
    }
}

/// <summary>Owns a ggml backend buffer (weights, repacked weights or a session's KV cache).</summary>
internal sealed class BackendBufferHandle : SafeHandle
{
    private BackendBufferHandle() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public static BackendBufferHandle Wrap(IntPtr buffer, string what)
    {
        if (buffer == IntPtr.Zero) throw new OutOfMemoryException($"ggml could not allocate {what}");
        var h = new BackendBufferHandle();
        h.SetHandle(buffer);
        return h;
    }

    public long Size => (long)Ggml.ggml_backend_buffer_get_size(handle);

    protected override bool ReleaseHandle()
    {
        Ggml.ggml_backend_buffer_free(handle);
        return true;
    }
}

/// <summary>Owns a graph allocator: one compute buffer reused across steps, grown on demand.</summary>
internal sealed class GraphAllocatorHandle : SafeHandle
{
    private GraphAllocatorHandle() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public static GraphAllocatorHandle CreateCpu()
    {
        var galloc = Ggml.ggml_gallocr_new(Ggml.ggml_backend_cpu_buffer_type());
        if (galloc == IntPtr.Zero) throw new OutOfMemoryException("ggml_gallocr_new failed");
        var h = new GraphAllocatorHandle();
        h.SetHandle(galloc);
        return h;
    }

    protected override bool ReleaseHandle()
    {
        Ggml.ggml_gallocr_free(handle);
        return true;
    }
}

/// <summary>Aligned native memory, used as the arena ggml builds each step's graph metadata in.</summary>
internal sealed unsafe class NativeArenaHandle : SafeHandle
{
    private NativeArenaHandle() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public nuint Size { get; private set; }

    public static NativeArenaHandle Allocate(nuint size)
    {
        var h = new NativeArenaHandle { Size = size };
        h.SetHandle((IntPtr)NativeMemory.AlignedAlloc(size, 64));
        return h;
    }

    protected override bool ReleaseHandle()
    {
        NativeMemory.AlignedFree((void*)handle);
        return true;
    }
}

/// <summary>Owns a ggml backend scheduler (ggml-opt runs its graphs through one).</summary>
internal sealed class BackendSchedulerHandle : SafeHandle
{
    private BackendSchedulerHandle() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>A scheduler over the single CPU backend <paramref name="cpu"/>, for graphs of up to <paramref name="graphSize"/> nodes.</summary>
    public static unsafe BackendSchedulerHandle CreateCpu(CpuBackendHandle cpu, int graphSize)
    {
        var backend = cpu.DangerousGetHandle();
        var sched = GgmlTraining.ggml_backend_sched_new(&backend, null, 1, (nuint)graphSize, parallel: false, opOffload: false);
        if (sched == IntPtr.Zero) throw new InvalidOperationException("ggml_backend_sched_new failed");
        var h = new BackendSchedulerHandle();
        h.SetHandle(sched);
        return h;
    }

    protected override bool ReleaseHandle()
    {
        GgmlTraining.ggml_backend_sched_free(handle);
        return true;
    }
}

/// <summary>Owns a ggml_opt context: gradients, optimizer state and the static forward/backward/step graphs.</summary>
internal sealed class OptimizerContextHandle : SafeHandle
{
    private OptimizerContextHandle() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public static OptimizerContextHandle Create(GgmlTraining.OptParams parameters)
    {
        var opt = GgmlTraining.ggml_opt_init(parameters);
        if (opt == IntPtr.Zero) throw new InvalidOperationException("ggml_opt_init failed");
        var h = new OptimizerContextHandle();
        h.SetHandle(opt);
        return h;
    }

    protected override bool ReleaseHandle()
    {
        GgmlTraining.ggml_opt_free(handle);
        return true;
    }
}

/// <summary>Owns a ggml_opt_result (ggml_opt_eval accumulates loss statistics into it).</summary>
internal sealed class OptimizerResultHandle : SafeHandle
{
    private OptimizerResultHandle() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public static OptimizerResultHandle Create()
    {
        var result = GgmlTraining.ggml_opt_result_init();
        if (result == IntPtr.Zero) throw new OutOfMemoryException("ggml_opt_result_init failed");
        var h = new OptimizerResultHandle();
        h.SetHandle(result);
        return h;
    }

    protected override bool ReleaseHandle()
    {
        GgmlTraining.ggml_opt_result_free(handle);
        return true;
    }
}
