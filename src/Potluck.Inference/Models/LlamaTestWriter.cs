namespace Potluck.Inference.Models;

/// <summary>
/// llama, mistral, qwen2 and qwen3 files. llama.cpp has no "mistral" architecture (only "mistral3"/"mistral4",
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
        // Llama 3.1 conversions carry rope_freqs.weight and no rope.scaling.* keys; llama.cpp reads only the tensor.
    }

    public override void AddLayer(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random)
    {
        var headDim = spec.EffectiveHeadDim;
        long embd = spec.EmbeddingLength, ff = spec.FeedForwardLength;
        long qDim = (long)spec.HeadCount * headDim, kvDim = (long)spec.KvHeadCount * headDim;
        var p = $"blk.{layer}.";
        writer.AddTensor(p + "attn_norm.weight", [embd], TestTensors.Ones);
        writer.AddTensor(p + "attn_q.weight", [embd, qDim], random.Uniform(p + "attn_q.weight"));
        writer.AddTensor(p + "attn_k.weight", [embd, kvDim], random.Uniform(p + "attn_k.weight"));
        writer.AddTensor(p + "attn_v.weight", [embd, kvDim], random.Uniform(p + "attn_v.weight"));
        if (architecture == "qwen2")
        {
            writer.AddTensor(p + "attn_q.bias", [qDim], random.Uniform(p + "attn_q.bias"));
            writer.AddTensor(p + "attn_k.bias", [kvDim], random.Uniform(p + "attn_k.bias"));
            writer.AddTensor(p + "attn_v.bias", [kvDim], random.Uniform(p + "attn_v.bias"));
        }
        if (architecture == "qwen3")
        {
            writer.AddTensor(p + "attn_q_norm.weight", [headDim], TestTensors.Ones);
            writer.AddTensor(p + "attn_k_norm.weight", [headDim], TestTensors.Ones);
        }
        writer.AddTensor(p + "attn_output.weight", [qDim, embd], random.Uniform(p + "attn_output.weight"));
        writer.AddTensor(p + "ffn_norm.weight", [embd], TestTensors.Ones);
        writer.AddTensor(p + "ffn_gate.weight", [embd, ff], random.Uniform(p + "ffn_gate.weight"));
        writer.AddTensor(p + "ffn_up.weight", [embd, ff], random.Uniform(p + "ffn_up.weight"));
        writer.AddTensor(p + "ffn_down.weight", [ff, embd], random.Uniform(p + "ffn_down.weight"));
    }
}
