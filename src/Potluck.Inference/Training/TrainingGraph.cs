using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Training;

/// <summary>
/// The demo model's forward pass as one static ggml graph over a batch of windows, trained with ggml-opt (AdamW,
/// cross-entropy against one-hot labels). The math is the engine's llama block (RMS norm, RoPE mode 0, causal
/// attention, SwiGLU feed-forward, final norm and LM head); attention is written out with soft_max (which has a
/// CPU backward pass) instead of flash attention, and SwiGLU as silu(gate)·up. Every tensor is trainable.
/// </summary>
internal sealed unsafe class TrainingGraph : IDisposable
{
    private readonly DemoModelConfig _config;
    private readonly CpuBackendHandle _backend;
    private readonly GgmlContextHandle _weightContext;
    private readonly BackendBufferHandle _weightBuffer;
    private readonly GgmlContextHandle _inputContext;
    private readonly BackendBufferHandle _inputBuffer;
    private readonly NativeArenaHandle _computeArena;
    private readonly GgmlContextHandle _computeContext;
    private readonly BackendSchedulerHandle _scheduler;
    private readonly OptimizerContextHandle _optimizer;
    private readonly OptimizerResultHandle _result;
    private readonly Schedule _schedule;
    private GCHandle _scheduleHandle;
    private readonly Dictionary<string, IntPtr> _weights = new(StringComparer.Ordinal);
    private readonly IntPtr _tokens, _positions, _mask, _labels, _loss;
    private readonly float[] _labelBuffer;
    private readonly int _rows;

    /// <summary>The optimizer step the parameter callback reports a learning rate for.</summary>
    private sealed class Schedule(DemoModelConfig config)
    {
        public int Step;
        public GgmlTraining.OptimizerParams Current() => new()
        {
            AdamAlpha = config.LearningRateAt(Step),
            AdamBeta1 = 0.9f,
            AdamBeta2 = 0.95f,
            AdamEps = 1e-8f,
            AdamWeightDecay = config.WeightDecay,
            SgdAlpha = config.LearningRateAt(Step),
            SgdWeightDecay = 0f,
        };
    }

    public TrainingGraph(DemoModelConfig config, IReadOnlyList<DemoModelFile.TensorSpec> tensors, Func<DemoModelFile.TensorSpec, float[]> initial)
    {
        _config = config;
        NativeRuntime.EnsureLoaded();
        _backend = CpuBackendHandle.Create(config.Threads);
        _rows = config.BatchWindows * config.ContextLength;

        // Weights: every tensor a parameter, in one backend buffer.
        _weightContext = GgmlContextHandle.Create(tensors.Count + 8);
        var wctx = _weightContext.DangerousGetHandle();
        foreach (var t in tensors)
        {
            var tensor = t.Shape.Length == 1
                ? Ggml.ggml_new_tensor_1d(wctx, (int)GgmlType.F32, t.Shape[0])
                : Ggml.ggml_new_tensor_2d(wctx, (int)GgmlType.F32, t.Shape[0], t.Shape[1]);
            Ggml.ggml_set_name(tensor, t.Name);
            GgmlTraining.ggml_set_param(tensor);
            _weights[t.Name] = tensor;
        }
        _weightBuffer = BackendBufferHandle.Wrap(Ggml.ggml_backend_alloc_ctx_tensors(wctx, _backend.DangerousGetHandle()), "the weights");
        foreach (var t in tensors) Write(_weights[t.Name], initial(t));

        // Inputs are allocated statically (ggml-opt requires it of static graphs): tokens, positions, causal mask.
        _inputContext = GgmlContextHandle.Create(8);
        var ictx = _inputContext.DangerousGetHandle();
        var T = config.ContextLength;
        _tokens = Ggml.ggml_new_tensor_1d(ictx, (int)GgmlType.I32, _rows);
        Ggml.ggml_set_name(_tokens, "tokens");
        _positions = Ggml.ggml_new_tensor_1d(ictx, (int)GgmlType.I32, T);
        Ggml.ggml_set_name(_positions, "positions");
        _mask = Ggml.ggml_new_tensor_2d(ictx, (int)GgmlType.F32, T, T);
        Ggml.ggml_set_name(_mask, "causal_mask");
        _inputBuffer = BackendBufferHandle.Wrap(Ggml.ggml_backend_alloc_ctx_tensors(ictx, _backend.DangerousGetHandle()), "the inputs");
        Write(_positions, Enumerable.Range(0, T).ToArray());
        var mask = new float[T * T];
        for (var q = 0; q < T; q++)
            for (var k = 0; k < T; k++)
                mask[q * T + k] = k <= q ? 0f : float.NegativeInfinity;
        Write(_mask, mask);

        // The compute context holds graph metadata: the forward graph and ggml-opt's backward and step graphs.
        const int graphSize = 2048; // GGML_DEFAULT_GRAPH_SIZE, what ggml_opt_init gives static graphs
        var arenaBytes = Ggml.ggml_tensor_overhead() * 16384 + 4 * Ggml.ggml_graph_overhead_custom(graphSize, 1) + (1 << 20);
        _computeArena = NativeArenaHandle.Allocate(arenaBytes);
        _computeContext = GgmlContextHandle.Create(0, _computeArena.DangerousGetHandle(), _computeArena.Size);
        var logits = BuildForward(_computeContext.DangerousGetHandle());

        _scheduler = BackendSchedulerHandle.CreateCpu(_backend, 4 * 8192);
        _schedule = new Schedule(config);
        _scheduleHandle = GCHandle.Alloc(_schedule);
        var p = GgmlTraining.ggml_opt_default_params(_scheduler.DangerousGetHandle(), GgmlTraining.LossCrossEntropy);
        p.ContextCompute = _computeContext.DangerousGetHandle();
        p.Inputs = _tokens;
        p.Outputs = logits;
        p.BuildType = GgmlTraining.BuildTypeOpt;
        p.OptPeriod = 1;
        p.Optimizer = GgmlTraining.OptimizerAdamW;
        p.GetOptimizerParams = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, GgmlTraining.OptimizerParams>)&OptimizerParamsCallback;
        p.GetOptimizerParamsUserData = GCHandle.ToIntPtr(_scheduleHandle);
        _optimizer = OptimizerContextHandle.Create(p);
        _result = OptimizerResultHandle.Create();
        _labels = GgmlTraining.ggml_opt_labels(_optimizer.DangerousGetHandle());
        _loss = GgmlTraining.ggml_opt_loss(_optimizer.DangerousGetHandle());
        _labelBuffer = new float[(long)_rows * config.VocabSize];
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static GgmlTraining.OptimizerParams OptimizerParamsCallback(IntPtr userData) =>
        ((Schedule)GCHandle.FromIntPtr(userData).Target!).Current();

    private IntPtr BuildForward(IntPtr ctx)
    {
        var c = _config;
        int E = c.EmbeddingLength, H = c.HeadCount, D = c.HeadDim, T = c.ContextLength, B = c.BatchWindows;
        var scale = 1f / MathF.Sqrt(D);
        IntPtr W(string name) => _weights[name];

        var x = Ggml.ggml_get_rows(ctx, W("token_embd.weight"), _tokens); // [E, T·B]
        for (var l = 0; l < c.LayerCount; l++)
        {
            var p = $"blk.{l}.";
            var h = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, x, c.RmsNormEps), W(p + "attn_norm.weight"));
            var q = Ggml.ggml_mul_mat(ctx, W(p + "attn_q.weight"), h);
            var k = Ggml.ggml_mul_mat(ctx, W(p + "attn_k.weight"), h);
            var v = Ggml.ggml_mul_mat(ctx, W(p + "attn_v.weight"), h);
            q = GgmlTraining.ggml_reshape_4d(ctx, q, D, H, T, B);
            k = GgmlTraining.ggml_reshape_4d(ctx, k, D, H, T, B);
            v = GgmlTraining.ggml_reshape_4d(ctx, v, D, H, T, B);
            q = Rope(ctx, q);
            k = Rope(ctx, k);
            q = GgmlTraining.ggml_cont(ctx, Ggml.ggml_permute(ctx, q, 0, 2, 1, 3)); // [D, T, H, B]
            k = GgmlTraining.ggml_cont(ctx, Ggml.ggml_permute(ctx, k, 0, 2, 1, 3)); // [D, T, H, B]
            var vt = GgmlTraining.ggml_cont(ctx, Ggml.ggml_permute(ctx, v, 1, 2, 0, 3)); // [T, D, H, B]
            var kq = Ggml.ggml_mul_mat(ctx, k, q); // [Tk, Tq, H, B]
            kq = GgmlTraining.ggml_soft_max_ext(ctx, kq, _mask, scale, 0f);
            var kqv = Ggml.ggml_mul_mat(ctx, vt, kq); // [D, Tq, H, B]
            var merged = GgmlTraining.ggml_cont(ctx, Ggml.ggml_permute(ctx, kqv, 0, 2, 1, 3)); // [D, H, T, B]
            var attention = Ggml.ggml_reshape_2d(ctx, merged, E, (long)T * B);
            x = Ggml.ggml_add(ctx, x, Ggml.ggml_mul_mat(ctx, W(p + "attn_output.weight"), attention));

            h = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, x, c.RmsNormEps), W(p + "ffn_norm.weight"));
            var gate = GgmlTraining.ggml_silu(ctx, Ggml.ggml_mul_mat(ctx, W(p + "ffn_gate.weight"), h));
            var up = Ggml.ggml_mul_mat(ctx, W(p + "ffn_up.weight"), h);
            x = Ggml.ggml_add(ctx, x, Ggml.ggml_mul_mat(ctx, W(p + "ffn_down.weight"), Ggml.ggml_mul(ctx, gate, up)));
        }
        x = Ggml.ggml_mul(ctx, Ggml.ggml_rms_norm(ctx, x, c.RmsNormEps), W("output_norm.weight"));
        var logits = Ggml.ggml_mul_mat(ctx, W("output.weight"), x); // [V, T·B]
        Ggml.ggml_set_name(logits, "logits");
        return logits;
    }

    /// <summary>llama's RoPE (mode 0, normal), as the engine applies it.</summary>
    private IntPtr Rope(IntPtr ctx, IntPtr t) => Ggml.ggml_rope_ext(ctx, t, _positions, IntPtr.Zero, _config.HeadDim, 0,
        _config.ContextLength, _config.RopeFreqBase, 1f, 0f, 1f, 32f, 1f);

    /// <summary>One optimizer step on <paramref name="windows"/> (BatchWindows × (ContextLength + 1) tokens); returns the mean loss.</summary>
    public float TrainStep(int step, ReadOnlySpan<int> windows)
    {
        _schedule.Step = step;
        var opt = _optimizer.DangerousGetHandle();
        GgmlTraining.ggml_opt_alloc(opt, backward: true);
        SetBatch(windows, null);
        GgmlTraining.ggml_opt_result_reset(_result.DangerousGetHandle());
        GgmlTraining.ggml_opt_eval(opt, _result.DangerousGetHandle());
        return ReadLoss();
    }

    /// <summary>
    /// Forward pass only; returns the summed cross-entropy (nats) over rows whose target is wanted and how many
    /// such rows there were. Rows not wanted get an all-zero label, which adds nothing to the loss.
    /// </summary>
    public (double Nats, int Rows) Evaluate(ReadOnlySpan<int> windows, ReadOnlySpan<bool> targetWanted)
    {
        var opt = _optimizer.DangerousGetHandle();
        GgmlTraining.ggml_opt_alloc(opt, backward: false);
        var wanted = SetBatch(windows, targetWanted);
        GgmlTraining.ggml_opt_result_reset(_result.DangerousGetHandle());
        GgmlTraining.ggml_opt_eval(opt, _result.DangerousGetHandle());
        // ggml's cross-entropy is the mean over all rows.
        return ((double)ReadLoss() * _rows, wanted);
    }

    private int SetBatch(ReadOnlySpan<int> windows, ReadOnlySpan<bool> targetWanted)
    {
        var T = _config.ContextLength;
        var V = _config.VocabSize;
        if (windows.Length != _config.BatchWindows * (T + 1)) throw new ArgumentException("a batch holds BatchWindows windows of ContextLength + 1 tokens");
        var tokens = new int[_rows];
        Array.Clear(_labelBuffer);
        var wanted = 0;
        for (var b = 0; b < _config.BatchWindows; b++)
        {
            var w = windows.Slice(b * (T + 1), T + 1);
            for (var t = 0; t < T; t++)
            {
                var row = b * T + t;
                tokens[row] = w[t];
                if (!targetWanted.IsEmpty && !targetWanted[b * (T + 1) + t + 1]) continue;
                _labelBuffer[(long)row * V + w[t + 1]] = 1f;
                wanted++;
            }
        }
        Write(_tokens, tokens);
        Write(_labels, _labelBuffer);
        return wanted;
    }

    private float ReadLoss()
    {
        float loss;
        Ggml.ggml_backend_tensor_get(_loss, &loss, 0, sizeof(float));
        return loss;
    }

    /// <summary>The current values of a weight.</summary>
    public float[] Read(string name)
    {
        var tensor = _weights[name];
        var data = new float[Ggml.ggml_nelements(tensor)];
        fixed (float* p = data) Ggml.ggml_backend_tensor_get(tensor, p, 0, (nuint)(data.Length * sizeof(float)));
        return data;
    }

    private static void Write<T>(IntPtr tensor, T[] data) where T : unmanaged
    {
        if ((long)Ggml.ggml_nbytes(tensor) != (long)data.Length * sizeof(T))
            throw new ArgumentException($"tensor holds {Ggml.ggml_nbytes(tensor)} bytes, data {data.Length * sizeof(T)}");
        fixed (T* p = data) Ggml.ggml_backend_tensor_set(tensor, p, 0, (nuint)(data.Length * sizeof(T)));
    }

    public void Dispose()
    {
        _result.Dispose();
        _optimizer.Dispose();
        _scheduler.Dispose();
        if (_scheduleHandle.IsAllocated) _scheduleHandle.Free();
        _computeContext.Dispose();
        _computeArena.Dispose();
        _inputBuffer.Dispose();
        _inputContext.Dispose();
        _weightBuffer.Dispose();
        _weightContext.Dispose();
        _backend.Dispose();
    }
}
