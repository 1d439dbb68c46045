using System.IO.MemoryMappedFiles;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Engine;

/// <summary>
/// A GGUF model opened for execution: the file is memory-mapped once and tensors are bound lazily, so a
/// span touches (and makes resident) only its own layers. Weights that llama.cpp would repack into a
/// faster CPU layout (Q4_0, Q4_K, IQ4_NL on AVX2+) are repacked the same way, for speed parity.
/// One instance per file per process: every span and head of that file shares it.
/// </summary>
public sealed unsafe class GgufModel : IDisposable
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, TensorInfo> _index;
    private readonly Dictionary<string, IntPtr> _bound = new(StringComparer.Ordinal);
    private readonly List<BackendBufferHandle> _repackBuffers = [];
    private readonly MemoryMappedFile _mappedFile;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;
    private readonly BackendBufferHandle _mappedBuffer;
    private readonly GgmlContextHandle _tensorContext;
    private readonly IntPtr[] _extraBufferTypes;
    private readonly IntPtr _cpuDevice;
    private long _repackedBytes;
    private bool _disposed;

    public ModelInfo Info { get; }

    /// <summary>Start of the file mapping in this process (tests read its residency from /proc/self/smaps).</summary>
    internal IntPtr MappedAddress => (IntPtr)(_base - _view.PointerOffset);

    /// <summary>Bytes of weights copied into repacked buffers (resident; the rest is mapped from the file).</summary>
    public long RepackedBytes => Interlocked.Read(ref _repackedBytes);

    /// <summary>Names of tensors bound so far (what spans and heads of this process use).</summary>
    public IReadOnlyCollection<string> BoundTensors
    {
        get { lock (_gate) return _bound.Keys.ToArray(); }
    }

    private GgufModel(GgufFile file, ModelInfo info)
    {
        Info = info;
        _index = file.Tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        _mappedFile = MemoryMappedFile.CreateFromFile(file.Path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _view = _mappedFile.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + _view.PointerOffset;
        _mappedBuffer = BackendBufferHandle.Wrap(
            Ggml.ggml_backend_cpu_buffer_from_ptr((IntPtr)_base, (nuint)file.FileLength), "the mapped model file");
        // Two objects per tensor at most: a rejected repack probe leaves one behind, and a tied LM head needs a twin.
        _tensorContext = GgmlContextHandle.Create(2 * file.Tensors.Count + 16);
        (_cpuDevice, _extraBufferTypes) = CpuExtraBufferTypes();
    }

    /// <summary>Reads the header and tensor index only (any architecture): what `potluck model inspect` shows.</summary>
    public static ModelInfo Inspect(string path) => ModelInfoReader.Read(GgufFile.Read(path));

    /// <summary>Opens a model for execution; the architecture must be one the engine implements.</summary>
    public static GgufModel Open(string path)
    {
        var file = GgufFile.Read(path);
        var info = ModelInfoReader.Read(file);
        ModelInfoReader.ValidateForEngine(info);
        NativeRuntime.EnsureLoaded();
        return new GgufModel(file, info);
    }

    /// <summary>True when the file holds a tensor of this name.</summary>
    public bool HasTensor(string name) => _index.ContainsKey(name);

    /// <summary>Binds (once) and returns the tensor, checking its shape when <paramref name="shape"/> is given.</summary>
    internal IntPtr Weight(string name, WeightUse use, params long[] shape)
    {
        if (!_index.TryGetValue(name, out var info))
            throw new ModelTensorException($"model '{Info.Path}' has no tensor '{name}' (required by {Info.Architecture})");
        return Bind(name, info, use, shape);
    }

    /// <summary>Like <see cref="Weight"/> but returns zero when the file has no such tensor.</summary>
    internal IntPtr OptionalWeight(string name, WeightUse use, params long[] shape) =>
        _index.TryGetValue(name, out var info) ? Bind(name, info, use, shape) : IntPtr.Zero;

    /// <summary>
    /// A second tensor object over the same file data, for the tied LM head: llama.cpp treats the head's
    /// copy of token_embd as a matmul weight (repackable) while lookups need the plain layout.
    /// </summary>
    internal IntPtr WeightTwin(string name, string twinName, WeightUse use, params long[] shape)
    {
        if (!_index.TryGetValue(name, out var info))
            throw new ModelTensorException($"model '{Info.Path}' has no tensor '{name}'");
        return Bind(twinName, info, use, shape);
    }

    private IntPtr Bind(string key, TensorInfo info, WeightUse use, long[] shape)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (shape.Length > 0 && !ShapeMatches(info.Shape, shape))
            throw new ModelTensorException(
                $"tensor '{info.Name}' has shape [{string.Join(", ", info.Shape)}], expected [{string.Join(", ", shape)}]");
        lock (_gate)
        {
            if (_bound.TryGetValue(key, out var existing)) return existing;
            var tensor = use == WeightUse.MatMul && info.Shape.Length is 2 or 3 ? TryRepack(key, info) : IntPtr.Zero;
            if (tensor == IntPtr.Zero)
            {
                tensor = NewTensor(key, info);
                Check(Ggml.ggml_backend_tensor_alloc(_mappedBuffer.DangerousGetHandle(), tensor, (IntPtr)(_base + info.FileOffset)), info.Name);
            }
            _bound[key] = tensor;
            return tensor;
        }
    }

    private static bool ShapeMatches(long[] actual, long[] expected)
    {
        var dims = Math.Max(actual.Length, expected.Length);
        for (var i = 0; i < dims; i++)
        {
            var a = i < actual.Length ? actual[i] : 1;
            var e = i < expected.Length ? expected[i] : 1;
            if (a != e) return false;
        }
        return true;
    }

    private IntPtr NewTensor(string key, TensorInfo info)
    {
        var s = info.Shape;
        var t = Ggml.ggml_new_tensor_4d(_tensorContext.DangerousGetHandle(), (int)info.Type,
            s[0], s.Length > 1 ? s[1] : 1, s.Length > 2 ? s[2] : 1, s.Length > 3 ? s[3] : 1);
        if (t == IntPtr.Zero) throw new OutOfMemoryException("ggml tensor context is full");
        Ggml.ggml_set_name(t, key.Length < 64 ? key : key[..63]);
        return t;
    }

    /// <summary>
    /// Mirrors llama.cpp's weight buffer choice: try each extra CPU buffer type in order and keep the first
    /// whose device accepts a matmul reading the weight from it; such weights are copied (repacked) out of the map.
    /// </summary>
    private IntPtr TryRepack(string key, TensorInfo info)
    {
        if (_extraBufferTypes.Length == 0 || info.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16) return IntPtr.Zero;
        foreach (var bufferType in _extraBufferTypes)
        {
            var tensor = NewTensor(key, info);
            var buffer = Ggml.ggml_backend_buft_alloc_buffer(bufferType, (nuint)info.Bytes);
            if (buffer == IntPtr.Zero) continue;
            var handle = BackendBufferHandle.Wrap(buffer, "a repacked weight");
            if (Ggml.ggml_backend_tensor_alloc(buffer, tensor, Ggml.ggml_backend_buffer_get_base(buffer)) != Ggml.StatusSuccess
                || !MatMulSupported(tensor, info))
            {
                handle.Dispose();
                continue;
            }
            Ggml.ggml_backend_tensor_set(tensor, _base + info.FileOffset, 0, (nuint)info.Bytes);
            _repackBuffers.Add(handle);
            Interlocked.Add(ref _repackedBytes, info.Bytes);
            return tensor;
        }
        return IntPtr.Zero;
    }

    /// <summary>
    /// The probe llama.cpp's weight_buft_supported builds: a 512-row matmul for 2-D weights, and for 3-D expert
    /// weights a mul_mat_id over n_expert_used experts of 512 rows.
    /// </summary>
    private bool MatMulSupported(IntPtr weight, TensorInfo info)
    {
        using var probe = GgmlContextHandle.Create(4);
        var ctx = probe.DangerousGetHandle();
        IntPtr op;
        if (info.Shape.Length == 3)
        {
            var used = Math.Max(1, ExpertsUsed);
            var input = Ggml.ggml_new_tensor_4d(ctx, (int)GgmlType.F32, info.Shape[0], used, 512, 1);
            var ids = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.I32, used, 512);
            op = Ggml.ggml_mul_mat_id(ctx, weight, input, ids);
        }
        else
        {
            var input = Ggml.ggml_new_tensor_2d(ctx, (int)GgmlType.F32, info.Shape[0], 512);
            op = Ggml.ggml_mul_mat(ctx, weight, input);
        }
        return Ggml.ggml_backend_dev_supports_op(_cpuDevice, op) != 0;
    }

    private int ExpertsUsed => Info.Parameters is Families.IExpertCounts e ? e.ExpertUsedCount : 1;

    private static (IntPtr Device, IntPtr[] Types) CpuExtraBufferTypes()
    {
        if (Environment.GetEnvironmentVariable("POTLUCK_NO_REPACK") == "1") return (IntPtr.Zero, []);
        var reg = Ggml.ggml_backend_cpu_reg();
        var device = Ggml.ggml_backend_reg_dev_get(reg, 0);
        var fn = Ggml.ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
        if (reg == IntPtr.Zero || device == IntPtr.Zero || fn == IntPtr.Zero) return (device, []);
        var list = (IntPtr*)((delegate* unmanaged<IntPtr, IntPtr>)fn)(device);
        var types = new List<IntPtr>();
        for (var i = 0; list != null && list[i] != IntPtr.Zero; i++) types.Add(list[i]);
        return (device, types.ToArray());
    }

    private static void Check(int status, string tensor)
    {
        if (status != Ggml.StatusSuccess) throw new ModelTensorException($"ggml could not bind tensor '{tensor}' (status {status})");
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            foreach (var b in _repackBuffers) b.Dispose();
            _mappedBuffer.Dispose();
            _tensorContext.Dispose();
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
            _mappedFile.Dispose();
        }
    }
}

/// <summary>How a weight is consumed, which decides whether it may be repacked.</summary>
internal enum WeightUse
{
    /// <summary>Elementwise or row lookup (norms, biases, embeddings): must keep the file layout.</summary>
    Plain,
    /// <summary>Left operand of a matmul: may move into a repacked CPU buffer.</summary>
    MatMul,
}
