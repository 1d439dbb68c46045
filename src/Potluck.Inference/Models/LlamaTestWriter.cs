namespace Potluck.Inference.Models;

/// <summary>
/// llama, mistral, qwen2 and qwen3 files; a llama spec with ExpertCount &gt; 0 is a Mixtral file (expert layers). llama.cpp has no "mistral" architecture (only "mistral3"/"mistral4",
/// different models): Mistral 7B GGUFs are "llama" files, so a "mistral" test model is a llama file with
/// Mistral's hyperparameters and its sliding-window key, which llama.cpp's llama loader does not read.
/// </summary>
internal sealed class LlamaTestWriter(string architecture) : TestFamilyWriter
{
    public override string Architecture => architecture;
    public override string GgufArchitecture => architecture == "mistral" ? "llama" : architecture;

    public override TestModelSpec Example => architecture switch
    {
        "mistral" => new TestModelSpec { Architecture = "mistral", KvHeadCount = 1, RopeFreqBase = 1_000_000f },
        // Qwen2 small models: Q/K/V biases, tied embeddings, rope base 1e6, eps 1e-6.
        "qwen2" => new TestModelSpec { Architecture = "qwen2", TiedEmbeddings = true, RopeFreqBase = 1_000_000f, RmsNormEps = 1e-6f },
        // Qwen3: per-head Q/K norms and a head size that is not EmbeddingLength / HeadCount.
        "qwen3" => new TestModelSpec { Architecture = "qwen3", HeadDim = 32, RopeFreqBase = 1_000_000f, RmsNormEps = 1e-6f },
        _ => new TestModelSpec(),
    };

    public override void Validate(TestModelSpec spec)
    {
        if (spec.RopeFreqFactors && architecture is not ("llama" or "mistral"))
            throw new ArgumentException($"rope frequency factors are a Llama 3 feature; llama.cpp's {architecture} loader rejects rope_freqs.weight");
        if (spec.ExpertCount > 0 && architecture is not ("llama" or "mistral"))
            throw new ArgumentException($"llama.cpp's {architecture} loader has no expert layers; use {architecture}moe");
        if (spec.ExpertCount > 0 && (spec.ExpertFeedForwardLength ?? spec.FeedForwardLength) != spec.FeedForwardLength)
            throw new ArgumentException("Mixtral's experts are feed_forward_length wide: leave ExpertFeedForwardLength null or equal");
        if (spec.SharedExpertFeedForwardLength is not null || spec.LeadingDenseLayers > 0)
            throw new ArgumentException($"the {architecture} generator writes no shared experts or leading dense layers");
    }

    public override void AddMetadata(GgufWriter writer, TestModelSpec spec)
    {
        var arch = GgufArchitecture;
        if (architecture == "qwen3" || spec.HeadDim is not null)
        {
            writer.Add($"{arch}.attention.key_length", (uint)spec.EffectiveHeadDim)
                  .Add($"{arch}.attention.value_length", (uint)spec.EffectiveHeadDim);
        }
        var window = spec.SlidingWindow ?? (architecture == "mistral" ? 4096 : (int?)null);
        if (window is { } w) writer.Add($"{arch}.attention.sliding_window", (uint)w);
        if (spec.ExpertCount > 0) AddExpertCounts(writer, arch, spec);
        // Llama 3.1 conversions carry rope_freqs.weight and no rope.scaling.* keys; llama.cpp reads only the tensor.
    }

    public override void AddLayer(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random)
    {
        AddAttention(writer, spec, layer, random, qkvBias: architecture == "qwen2", qkNorm: architecture == "qwen3");
        var p = $"blk.{layer}.";
        long embd = spec.EmbeddingLength, ff = spec.FeedForwardLength;
        writer.AddTensor(p + "ffn_norm.weight", [embd], TestTensors.Ones);
        if (spec.ExpertCount > 0)
        {
            // Mixtral: llama.cpp's llama loader sizes the experts by feed_forward_length.
            AddExperts(writer, spec, layer, random, ff);
            return;
        }
        writer.AddTensor(p + "ffn_gate.weight", [embd, ff], random.Uniform(p + "ffn_gate.weight"));
        writer.AddTensor(p + "ffn_up.weight", [embd, ff], random.Uniform(p + "ffn_up.weight"));
        writer.AddTensor(p + "ffn_down.weight", [ff, embd], random.Uniform(p + "ffn_down.weight"));
    }

    /// <summary>attn_norm, Q/K/V (with biases, or per-head Q/K norms) and attn_output of one layer.</summary>
    internal static void AddAttention(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random, bool qkvBias, bool qkNorm)
    {
        var headDim = spec.EffectiveHeadDim;
        long embd = spec.EmbeddingLength;
        long qDim = (long)spec.HeadCount * headDim, kvDim = (long)spec.KvHeadCount * headDim;
        var p = $"blk.{layer}.";
        writer.AddTensor(p + "attn_norm.weight", [embd], TestTensors.Ones);
        writer.AddTensor(p + "attn_q.weight", [embd, qDim], random.Uniform(p + "attn_q.weight"));
        writer.AddTensor(p + "attn_k.weight", [embd, kvDim], random.Uniform(p + "attn_k.weight"));
        writer.AddTensor(p + "attn_v.weight", [embd, kvDim], random.Uniform(p + "attn_v.weight"));
        if (qkvBias)
        {
            writer.AddTensor(p + "attn_q.bias", [qDim], random.Uniform(p + "attn_q.bias"));
            writer.AddTensor(p + "attn_k.bias", [kvDim], random.Uniform(p + "attn_k.bias"));
            writer.AddTensor(p + "attn_v.bias", [kvDim], random.Uniform(p + "attn_v.bias"));
        }
        if (qkNorm)
        {
            writer.AddTensor(p + "attn_q_norm.weight", [headDim], TestTensors.Ones);
            writer.AddTensor(p + "attn_k_norm.weight", [headDim], TestTensors.Ones);
        }
        writer.AddTensor(p + "attn_output.weight", [qDim, embd], random.Uniform(p + "attn_output.weight"));
    }

    /// <summary>
    /// The router ffn_gate_inp [embd, n_expert] and the 3-D experts ffn_{gate,up}_exps [embd, ff, n_expert] and
    /// ffn_down_exps [ff, embd, n_expert], as llama.cpp's converters write them.
    /// </summary>
    internal static void AddExperts(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random, long ff)
    {
        long embd = spec.EmbeddingLength, n = spec.ExpertCount;
        var p = $"blk.{layer}.";
        writer.AddTensor(p + "ffn_gate_inp.weight", [embd, n], random.Uniform(p + "ffn_gate_inp.weight"));
        writer.AddTensor(p + "ffn_gate_exps.weight", [embd, ff, n], random.Uniform(p + "ffn_gate_exps.weight"));
        writer.AddTensor(p + "ffn_up_exps.weight", [embd, ff, n], random.Uniform(p + "ffn_up_exps.weight"));
        writer.AddTensor(p + "ffn_down_exps.weight", [ff, embd, n], random.Uniform(p + "ffn_down_exps.weight"));
    }

    /// <summary>expert_count and expert_used_count.</summary>
    internal static void AddExpertCounts(GgufWriter writer, string arch, TestModelSpec spec) =>
        writer.Add($"{arch}.expert_count", (uint)spec.ExpertCount).Add($"{arch}.expert_used_count", (uint)spec.ExpertUsedCount);
}
