using Potluck.Inference.Families;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Engine;

/// <summary>
/// One session's F16 K and V caches for every layer of a span, each layer as wide as its <see cref="LayerKv"/> says
/// (a layer whose V is its K's prefix, latent attention, has no V tensor). Each layer's cache is contiguous over the
/// session's whole <see cref="Capacity"/>, in reserved address space that costs memory only where written; the span
/// charges its budget in blocks of <see cref="LayerSpan.KvBlockTokens"/> positions as the session grows
/// (<see cref="ReservedTokens"/>) and gives pages back when it shrinks.
/// </summary>
internal sealed class KvSession : IDisposable
{
    private readonly GgmlContextHandle _context;
    private readonly ReservedMemoryHandle _memory;
    private readonly BackendBufferHandle _buffer;
    // Per layer: where its K and V regions start in the reservation, and one position's row bytes.
    private readonly nuint[] _keyOffsets, _valueOffsets, _keyRowBytes, _valueRowBytes;

    public string Id { get; }
    /// <summary>Positions the session may ever hold (what it was opened for).</summary>
    public int Capacity { get; }
    public int Length { get; set; }
    /// <summary>Positions charged to the span's budget: whole blocks covering what the session holds or is about to.</summary>
    public int ReservedTokens { get; set; }
    /// <summary>K cache per layer of the span: [key_width, capacity] F16, one row per position.</summary>
    public IntPtr[] Keys { get; }
    /// <summary>V cache per layer: [value_width, capacity] F16, or zero where V shares K.</summary>
    public IntPtr[] Values { get; }

    public KvSession(string id, int capacity, ReadOnlySpan<LayerKv> layers)
    {
        Id = id;
        Capacity = capacity;
        Keys = new IntPtr[layers.Length];
        Values = new IntPtr[layers.Length];
        _keyOffsets = new nuint[layers.Length];
        _valueOffsets = new nuint[layers.Length];
        _keyRowBytes = new nuint[layers.Length];
        _valueRowBytes = new nuint[layers.Length];
        _context = GgmlContextHandle.Create(2 * layers.Length + 2);
        var ctx = _context.DangerousGetHandle();
        // Each region starts on a page, so discarding one layer's tail never touches another's rows.
        var page = ReservedMemoryHandle.PageSize;
        nuint size = 0;
        for (var l = 0; l < layers.Length; l++)
        {
            Keys[l] = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.F16, layers[l].KeyWidth, capacity);
            _keyRowBytes[l] = (nuint)layers[l].KeyWidth * sizeof(ushort);
            _keyOffsets[l] = size;
            size += AlignUp(Ggml.ggml_nbytes(Keys[l]), page);
            if (layers[l].ValueSharesKey) continue;
            Values[l] = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.F16, layers[l].ValueWidth, capacity);
            _valueRowBytes[l] = (nuint)layers[l].ValueWidth * sizeof(ushort);
            _valueOffsets[l] = size;
            size += AlignUp(Ggml.ggml_nbytes(Values[l]), page);
        }
        _memory = ReservedMemoryHandle.Reserve(size, $"the KV cache of session '{id}'");
        try
        {
            var address = _memory.DangerousGetHandle();
            _buffer = BackendBufferHandle.Wrap(Ggml.ggml_backend_cpu_buffer_from_ptr(address, _memory.Size), $"the KV cache of session '{id}'");
            var buffer = _buffer.DangerousGetHandle();
            for (var l = 0; l < layers.Length; l++)
            {
                Place(buffer, Keys[l], address + (nint)_keyOffsets[l]);
                if (Values[l] != IntPtr.Zero) Place(buffer, Values[l], address + (nint)_valueOffsets[l]);
            }
        }
        catch
        {
            _buffer?.Dispose();
            _memory.Dispose();
            _context.Dispose();
            throw;
        }
    }

    private static void Place(IntPtr buffer, IntPtr tensor, IntPtr address)
    {
        if (Ggml.ggml_backend_tensor_alloc(buffer, tensor, address) != 0)
            throw new InvalidOperationException("ggml refused to place a KV tensor in its reserved memory");
    }

    private static nuint AlignUp(nuint value, nuint alignment) => (value + alignment - 1) / alignment * alignment;

    /// <summary>Address space reserved (not memory used).</summary>
    public long ReservedBytes => (long)_memory.Size;

    /// <summary>Gives back the memory of positions from <paramref name="position"/> on, in every layer.</summary>
    public void Discard(int position)
    {
        if (position >= Capacity) return;
        var from = (nuint)position;
        var rows = (nuint)(Capacity - position);
        for (var l = 0; l < Keys.Length; l++)
        {
            _memory.Discard(_keyOffsets[l] + from * _keyRowBytes[l], rows * _keyRowBytes[l]);
            if (Values[l] != IntPtr.Zero) _memory.Discard(_valueOffsets[l] + from * _valueRowBytes[l], rows * _valueRowBytes[l]);
        }
    }

    public void Dispose()
    {
        _buffer.Dispose();
        _memory.Dispose();
        _context.Dispose();
    }
}
