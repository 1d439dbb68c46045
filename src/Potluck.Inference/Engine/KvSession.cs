using Potluck.Inference.Families;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Engine;

/// <summary>
/// One session's F16 K and V caches for every layer of a span, in one backend buffer, each layer as wide as its
/// <see cref="LayerKv"/> says. A layer whose V is its K's prefix (latent attention) has no V tensor.
/// </summary>
internal sealed class KvSession : IDisposable
{
    private readonly GgmlContextHandle _context;
    private readonly BackendBufferHandle _buffer;

    public string Id { get; }
    public int Capacity { get; }
    public int Length { get; set; }
    /// <summary>K cache per layer of the span: [key_width, capacity] F16, one row per position.</summary>
    public IntPtr[] Keys { get; }
    /// <summary>V cache per layer: [value_width, capacity] F16, or zero where V shares K.</summary>
    public IntPtr[] Values { get; }
    public long Bytes => _buffer.Size;

    public KvSession(string id, int capacity, ReadOnlySpan<LayerKv> layers, IntPtr backend)
    {
        Id = id;
        Capacity = capacity;
        Keys = new IntPtr[layers.Length];
        Values = new IntPtr[layers.Length];
        _context = GgmlContextHandle.Create(2 * layers.Length + 2);
        var ctx = _context.DangerousGetHandle();
        for (var l = 0; l < layers.Length; l++)
        {
            Keys[l] = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.F16, layers[l].KeyWidth, capacity);
            if (!layers[l].ValueSharesKey)
                Values[l] = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.F16, layers[l].ValueWidth, capacity);
        }
        // Pages stay untouched (and not resident) until positions are written.
        _buffer = BackendBufferHandle.Wrap(Ggml.ggml_backend_alloc_ctx_tensors(ctx, backend), $"the KV cache of session '{id}'");
    }

    public void Dispose()
    {
        _buffer.Dispose();
        _context.Dispose();
    }
}
