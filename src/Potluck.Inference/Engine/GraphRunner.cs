using Potluck.Inference.Native;

namespace Potluck.Inference.Engine;

/// <summary>
/// Builds and runs one ggml graph at a time on a CPU backend: graph metadata lives in a reused arena and
/// intermediate tensors in one compute buffer the allocator grows to the largest step seen, so a steady
/// decode loop allocates nothing.
/// </summary>
internal sealed unsafe class GraphRunner : IDisposable
{
    private readonly CpuBackendHandle _backend;
    private readonly GraphAllocatorHandle _allocator;
    private NativeArenaHandle _arena;
    // One context over the arena for the runner's life, emptied with ggml_reset per step: a context handle
    // created per step was the decode loop's only managed allocation.
    private GgmlContextHandle _context;
    private bool _building;

    public GraphRunner(int threads)
    {
        _backend = CpuBackendHandle.Create(threads);
        _allocator = GraphAllocatorHandle.CreateCpu();
        _arena = NativeArenaHandle.Allocate(ArenaBytes(4096));
        _context = GgmlContextHandle.Create(0, _arena.DangerousGetHandle(), _arena.Size);
    }

    /// <summary>Bytes of the compute buffer (intermediate tensors) currently reserved.</summary>
    public long ComputeBufferBytes => (long)Ggml.ggml_gallocr_get_buffer_size(_allocator.DangerousGetHandle(), 0);

    private static nuint ArenaBytes(int nodes) =>
        Ggml.ggml_tensor_overhead() * (nuint)(nodes * 2) + Ggml.ggml_graph_overhead_custom((nuint)nodes, 0) + 4096;

    /// <summary>Starts a graph of at most <paramref name="nodes"/> nodes; returns the context to build it in.</summary>
    public (IntPtr Context, IntPtr Graph) Begin(int nodes)
    {
        if (_building) throw new InvalidOperationException("a graph is already being built");
        var needed = ArenaBytes(nodes);
        if (needed > _arena.Size)
        {
            _context.Dispose();
            _arena.Dispose();
            _arena = NativeArenaHandle.Allocate(needed);
            _context = GgmlContextHandle.Create(0, _arena.DangerousGetHandle(), _arena.Size);
        }
        else
        {
            Ggml.ggml_reset(_context.DangerousGetHandle());
        }
        _building = true;
        var ctx = _context.DangerousGetHandle();
        return (ctx, Ggml.ggml_new_graph_custom(ctx, (nuint)nodes, 0));
    }

    /// <summary>Allocates every intermediate tensor of the graph; inputs may be written afterwards.</summary>
    public void Allocate(IntPtr graph)
    {
        if (Ggml.ggml_gallocr_alloc_graph(_allocator.DangerousGetHandle(), graph) == 0)
            throw new OutOfMemoryException("ggml could not allocate the compute buffer for this step");
    }

    public void Compute(IntPtr graph)
    {
        var status = Ggml.ggml_backend_graph_compute(_backend.DangerousGetHandle(), graph);
        if (status != Ggml.StatusSuccess) throw new EngineException($"ggml graph compute failed with status {status}");
    }

    /// <summary>Ends the step's graph; its metadata is dropped by the next <see cref="Begin"/>.</summary>
    public void End() => _building = false;

    public IntPtr Backend => _backend.DangerousGetHandle();

    public static void Write<T>(IntPtr tensor, ReadOnlySpan<T> data) where T : unmanaged
    {
        fixed (T* p = data) Ggml.ggml_backend_tensor_set(tensor, p, 0, (nuint)(data.Length * sizeof(T)));
    }

    public static void Read(IntPtr tensor, Span<float> destination)
    {
        fixed (float* p = destination) Ggml.ggml_backend_tensor_get(tensor, p, 0, (nuint)(destination.Length * sizeof(float)));
    }

    public void Dispose()
    {
        _building = false;
        _context.Dispose();
        _allocator.Dispose();
        _backend.Dispose();
        _arena.Dispose();
    }
}
