using Potluck.Inference.Engine;
using Potluck.Inference.Families;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;

namespace Potluck.Inference.Tests;

/// <summary>
/// MoeFeedForward's routing variants against a plain C# evaluation of the same formulas on F32 weights: the
/// families' oracle rows cover softmax routing; these cover what only gpt-oss and DeepSeek use (sigmoid, selection
/// bias, group-limited routing, softmax after top-k, per-expert biases, swiglu_oai), plus GeLU, one expert and merged gate_up.
/// </summary>
public sealed class MoeFeedForwardTests
{
    private const int Embd = 32, Ff = 16, SharedFf = 24, Experts = 8, Rows = 5;

    public static TheoryData<string> Variants() => new(["qwen3moe", "deepseek-v3", "gpt-oss", "gelu-one-merged", "qwen2moe-shared"]);

    [Theory]
    [MemberData(nameof(Variants))]
    public void MatchesAPlainEvaluation(string variant)
    {
        NativeRuntime.EnsureLoaded();
        var rng = new Random(variant.Length * 7919 + variant[0]);
        float[] Uniform(int n, float bound) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * bound).ToArray();

        var settings = variant switch
        {
            "qwen3moe" => new MoeSettings(Experts, 2, ExpertGating.Softmax, NormalizeWeights: true),
            "deepseek-v3" => new MoeSettings(Experts, 2, ExpertGating.Sigmoid, NormalizeWeights: true, WeightsScale: 2.5f, GroupCount: 4, GroupsUsed: 2),
            "gpt-oss" => new MoeSettings(Experts, 2, ExpertGating.SoftmaxAfterTopK, Activation: ExpertActivation.SwigluOai) { SwigluLimit = 0.5f },
            "gelu-one-merged" => new MoeSettings(Experts, 1, ExpertGating.Softmax, Activation: ExpertActivation.Gelu),
            _ => new MoeSettings(Experts, 3, ExpertGating.Softmax),
        };
        var merged = variant == "gelu-one-merged";
        var biased = variant == "gpt-oss";

        using var runner = new GraphRunner(2);
        using var tensors = new TensorSet(runner.Backend);
        var router = tensors.Add([Embd, Experts], Uniform(Embd * Experts, 0.6f));
        var gate = merged ? null : tensors.Add([Embd, Ff, Experts], Uniform(Embd * Ff * Experts, 0.3f));
        var up = merged ? null : tensors.Add([Embd, Ff, Experts], Uniform(Embd * Ff * Experts, 0.3f));
        var gateUp = merged ? tensors.Add([Embd, 2 * Ff, Experts], Uniform(Embd * 2 * Ff * Experts, 0.3f)) : null;
        var down = tensors.Add([Ff, Embd, Experts], Uniform(Ff * Embd * Experts, 0.3f));
        var routerBias = biased ? tensors.Add([Experts], Uniform(Experts, 0.5f)) : null;
        var selectionBias = variant == "deepseek-v3" ? tensors.Add([Experts], Uniform(Experts, 0.2f)) : null;
        var gateBias = biased ? tensors.Add([Ff, Experts], Uniform(Ff * Experts, 0.3f)) : null;
        var upBias = biased ? tensors.Add([Ff, Experts], Uniform(Ff * Experts, 0.3f)) : null;
        var downBias = biased ? tensors.Add([Embd, Experts], Uniform(Embd * Experts, 0.3f)) : null;
        var gateUpBias = merged ? tensors.Add([2 * Ff, Experts], Uniform(2 * Ff * Experts, 0.3f)) : null;
        var withShared = variant is "deepseek-v3" or "qwen2moe-shared";
        var sGate = withShared ? tensors.Add([Embd, SharedFf], Uniform(Embd * SharedFf, 0.3f)) : null;
        var sUp = withShared ? tensors.Add([Embd, SharedFf], Uniform(Embd * SharedFf, 0.3f)) : null;
        var sDown = withShared ? tensors.Add([SharedFf, Embd], Uniform(SharedFf * Embd, 0.3f)) : null;
        var sRouter = variant == "qwen2moe-shared" ? tensors.Add([Embd], Uniform(Embd, 0.6f)) : null;
        tensors.Upload();

        var weights = new MoeWeights(router.Tensor, up?.Tensor ?? 0, gate?.Tensor ?? 0, down.Tensor)
        {
            RouterBias = routerBias?.Tensor ?? 0,
            SelectionBias = selectionBias?.Tensor ?? 0,
            GateBias = gateBias?.Tensor ?? 0,
            UpBias = upBias?.Tensor ?? 0,
            DownBias = downBias?.Tensor ?? 0,
            GateUp = gateUp?.Tensor ?? 0,
            GateUpBias = gateUpBias?.Tensor ?? 0,
        };
        var shared = withShared ? new SharedExpert(new DenseFeedForward(sGate!.Tensor, sUp!.Tensor, sDown!.Tensor), sRouter?.Tensor ?? 0) : null;
        var ffn = new MoeFeedForward(settings, weights, shared);

        var x = Uniform(Embd * Rows, 1f);
        var actual = new float[Embd * Rows];
        var (ctx, graph) = runner.Begin(1024);
        var spanGraph = new SpanGraph([], 0, 1);
        var input = spanGraph.Begin(ctx, graph, default, [], Rows, Rows, Embd, isFinal: false);
        var output = ffn.Build(spanGraph, input);
        Ggml.ggml_build_forward_expand(graph, output);
        runner.Allocate(graph);
        GraphRunner.Write(input, (ReadOnlySpan<float>)x);
        runner.Compute(graph);
        GraphRunner.Read(output, actual);
        spanGraph.End();
        runner.End();

        // The plain evaluation, row by row.
        for (var r = 0; r < Rows; r++)
        {
            var xr = x.AsSpan(r * Embd, Embd).ToArray();
            var logits = MatVec(router.Data, Embd, Experts, 0, xr);
            if (routerBias is not null) for (var e = 0; e < Experts; e++) logits[e] += routerBias.Data[e];
            var probs = settings.Gating switch
            {
                ExpertGating.Softmax => Softmax(logits),
                ExpertGating.Sigmoid => logits.Select(v => 1f / (1f + MathF.Exp(-v))).ToArray(),
                _ => logits,
            };
            var selection = probs.ToArray();
            if (selectionBias is not null) for (var e = 0; e < Experts; e++) selection[e] += selectionBias.Data[e];
            if (settings.GroupCount > 1)
            {
                var per = Experts / settings.GroupCount;
                var scores = Enumerable.Range(0, settings.GroupCount)
                    .Select(g => selection.Skip(g * per).Take(per).OrderDescending().Take(2).Sum()).ToArray();
                var kept = Enumerable.Range(0, settings.GroupCount).OrderByDescending(g => scores[g]).Take(settings.GroupsUsed).ToHashSet();
                for (var e = 0; e < Experts; e++) if (!kept.Contains(e / per)) selection[e] = float.NegativeInfinity;
            }
            var chosen = Enumerable.Range(0, Experts).OrderByDescending(e => selection[e]).Take(settings.ExpertUsedCount).ToArray();
            var w = chosen.Select(e => probs[e]).ToArray();
            if (settings.Gating == ExpertGating.SoftmaxAfterTopK) w = Softmax(w);
            if (settings.NormalizeWeights)
            {
                var sum = Math.Max(w.Sum(), 6.103515625e-5f);
                w = w.Select(v => v / sum).ToArray();
            }
            if (settings.WeightsScale is not (0f or 1f)) w = w.Select(v => v * settings.WeightsScale).ToArray();

            var expected = new float[Embd];
            for (var i = 0; i < chosen.Length; i++)
            {
                var e = chosen[i];
                float[] g, u;
                if (merged)
                {
                    var gu = MatVec(gateUp!.Data, Embd, 2 * Ff, e, xr);
                    for (var j = 0; j < 2 * Ff; j++) gu[j] += gateUpBias!.Data[e * 2 * Ff + j];
                    (g, u) = (gu[..Ff], gu[Ff..]);
                }
                else
                {
                    g = MatVec(gate!.Data, Embd, Ff, e, xr);
                    u = MatVec(up!.Data, Embd, Ff, e, xr);
                    if (biased)
                        for (var j = 0; j < Ff; j++) { g[j] += gateBias!.Data[e * Ff + j]; u[j] += upBias!.Data[e * Ff + j]; }
                }
                var h = new float[Ff];
                for (var j = 0; j < Ff; j++) h[j] = Activate(settings, g[j], u[j]);
                var d = MatVec(down.Data, Ff, Embd, e, h);
                for (var j = 0; j < Embd; j++) expected[j] += w[i] * (d[j] + (biased ? downBias!.Data[e * Embd + j] : 0f));
            }
            if (withShared)
            {
                var g = MatVec(sGate!.Data, Embd, SharedFf, 0, xr);
                var u = MatVec(sUp!.Data, Embd, SharedFf, 0, xr);
                var h = g.Select((v, j) => v / (1f + MathF.Exp(-v)) * u[j]).ToArray();
                var d = MatVec(sDown!.Data, SharedFf, Embd, 0, h);
                var scale = 1f;
                if (sRouter is not null)
                {
                    var z = MatVec(sRouter.Data, Embd, 1, 0, xr)[0];
                    scale = 1f / (1f + MathF.Exp(-z));
                }
                for (var j = 0; j < Embd; j++) expected[j] += scale * d[j];
            }

            // GeLU in ggml goes through an F16 table: looser there.
            var tolerance = settings.Activation == ExpertActivation.Gelu ? 5e-3f : 1e-4f;
            for (var j = 0; j < Embd; j++)
                Assert.True(MathF.Abs(expected[j] - actual[r * Embd + j]) <= tolerance,
                    $"{variant} row {r} column {j}: expected {expected[j]}, got {actual[r * Embd + j]}");
        }
    }

    /// <summary>
    /// llama.cpp probes 3-D expert weights with a mul_mat_id and repacks them like 2-D ones (the Q4_K oracle rows
    /// match only so): where a 2-D Q4_K weight repacks, the experts of the same type do too.
    /// </summary>
    [Fact]
    public void ExpertWeightsRepackWhereMatMulWeightsDo()
    {
        var spec = FamilyOracleTests.Rows.Single(r => r.Name == "qwen3moe").Spec;
        using var model = GgufModel.Open(TestModels.Get(spec, GgmlType.Q4_K));
        var tensors = model.Info.Tensors.ToDictionary(t => t.Name);
        var dense = tensors["blk.0.attn_q.weight"];
        var experts = tensors["blk.0.ffn_gate_exps.weight"];
        Assert.Equal(GgmlType.Q4_K, dense.Type);
        Assert.Equal(GgmlType.Q4_K, experts.Type);
        model.Weight(dense.Name, WeightUse.MatMul);
        var afterDense = model.RepackedBytes;
        model.Weight(experts.Name, WeightUse.MatMul);
        Assert.Equal(afterDense == 0 ? 0 : afterDense + experts.Bytes, model.RepackedBytes);
    }

    private static float Activate(MoeSettings s, float g, float u) => s.Activation switch
    {
        ExpertActivation.SwigluOai => MathF.Min(g, s.SwigluLimit) / (1f + MathF.Exp(-s.SwigluAlpha * MathF.Min(g, s.SwigluLimit)))
                                      * (Math.Clamp(u, -s.SwigluLimit, s.SwigluLimit) + 1f),
        ExpertActivation.Gelu => 0.5f * g * (1f + MathF.Tanh(0.7978845608f * (g + 0.044715f * g * g * g))) * u,
        _ => g / (1f + MathF.Exp(-g)) * u,
    };

    /// <summary>out[j] = Σ_i W[i, j, expert] · x[i] for a ggml [ne0, ne1, n] weight.</summary>
    private static float[] MatVec(float[] w, int ne0, int ne1, int expert, float[] x)
    {
        var y = new float[ne1];
        for (var j = 0; j < ne1; j++)
        {
            var sum = 0.0;
            var offset = (expert * ne1 + j) * ne0;
            for (var i = 0; i < ne0; i++) sum += w[offset + i] * x[i];
            y[j] = (float)sum;
        }
        return y;
    }

    private static float[] Softmax(float[] v)
    {
        var max = v.Max();
        var e = v.Select(a => MathF.Exp(a - max)).ToArray();
        var sum = e.Sum();
        return e.Select(a => a / sum).ToArray();
    }

    private sealed record HostTensor(IntPtr Tensor, float[] Data);

    /// <summary>F32 weights in one CPU buffer.</summary>
    private sealed class TensorSet(IntPtr backend) : IDisposable
    {
        private readonly GgmlContextHandle _context = GgmlContextHandle.Create(64);
        private readonly List<HostTensor> _tensors = [];
        private BackendBufferHandle? _buffer;

        public HostTensor Add(long[] shape, float[] data)
        {
            var t = Ggml.ggml_new_tensor_4d(_context.DangerousGetHandle(), (int)GgmlType.F32,
                shape[0], shape.Length > 1 ? shape[1] : 1, shape.Length > 2 ? shape[2] : 1, 1);
            var h = new HostTensor(t, data);
            _tensors.Add(h);
            return h;
        }

        public void Upload()
        {
            _buffer = BackendBufferHandle.Wrap(Ggml.ggml_backend_alloc_ctx_tensors(_context.DangerousGetHandle(), backend), "test weights");
            foreach (var t in _tensors) GraphRunner.Write(t.Tensor, (ReadOnlySpan<float>)t.Data);
        }

        public void Dispose()
        {
            _buffer?.Dispose();
            _context.Dispose();
        }
    }
}
