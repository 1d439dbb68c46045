namespace Potluck.Inference.Models;

/// <summary>
/// deepseek2 files as llama.cpp's loader (b10221) reads them: multi-head latent attention (q_lora or direct Q,
/// attn_kv_a_mqa + attn_kv_a_norm), leading dense layers, then expert layers with shared experts. By default it writes
/// the split attn_k_b/attn_v_b layout current converters produce (head_count_kv 1, key_length = kv_lora_rank + rope,
/// key_length_mla/value_length_mla the decompressed head sizes), which llama.cpp runs absorbed with a latent cache;
/// <see cref="TestModelSpec.LegacyKvB"/> writes the older unsplit attn_kv_b (plain MHA cache). Both come from one
/// logical attn_kv_b, so the two layouts of one spec hold the same model.
/// </summary>
internal sealed class DeepSeek2TestWriter : TestFamilyWriter
{
    public override string Architecture => "deepseek2";

    /// <summary>DeepSeek V3 traits, tiny: q_lora, split MLA, one dense layer, sigmoid gating with norm, scale, selection bias and groups.</summary>
    public override TestModelSpec Example => new()
    {
        Architecture = "deepseek2",
        EmbeddingLength = 64,
        LayerCount = 3,
        HeadCount = 4,
        KvHeadCount = 1,
        FeedForwardLength = 128,
        QueryLoraRank = 32,
        KvLoraRank = 32,
        NopeHeadDim = 32,
        RopeHeadDim = 16,
        ValueHeadDim = 16,
        LeadingDenseLayers = 1,
        ExpertCount = 4,
        ExpertUsedCount = 2,
        ExpertFeedForwardLength = 32,
        SharedExpertFeedForwardLength = 32,
        ExpertGatingFunc = 2,
        ExpertWeightsNorm = true,
        ExpertWeightsScale = 2.5f,
        ExpertSelectionBias = true,
        ExpertGroupCount = 2,
        ExpertGroupUsedCount = 1,
        RmsNormEps = 1e-6f,
    };

    public override int RopeDimensions(TestModelSpec spec) => spec.RopeHeadDim;

    private static int ExpertFf(TestModelSpec spec) => spec.ExpertFeedForwardLength ?? spec.FeedForwardLength;

    private static int SharedCount(TestModelSpec spec) =>
        spec.SharedExpertFeedForwardLength is { } s ? s / ExpertFf(spec) : 1;

    public override void Validate(TestModelSpec spec)
    {
        if (spec.KvLoraRank <= 0) throw new ArgumentException("deepseek2 needs KvLoraRank > 0");
        if (spec.RopeHeadDim <= 0 || spec.RopeHeadDim % 2 != 0) throw new ArgumentException("deepseek2 needs a positive, even RopeHeadDim");
        if (spec.NopeHeadDim <= 0 || spec.ValueHeadDim <= 0) throw new ArgumentException("deepseek2 needs NopeHeadDim and ValueHeadDim > 0");
        if (spec.QueryLoraRank is <= 0) throw new ArgumentException("QueryLoraRank must be positive (or null for a direct attn_q)");
        var kvHeads = spec.LegacyKvB ? spec.HeadCount : 1;
        if (spec.KvHeadCount != kvHeads)
            throw new ArgumentException($"deepseek2 with {(spec.LegacyKvB ? "attn_kv_b" : "attn_k_b/attn_v_b")} has head_count_kv {kvHeads}; set KvHeadCount = {kvHeads}");
        if (spec.RopeFreqFactors) throw new ArgumentException("deepseek2 has no rope_freqs.weight");
        if (spec.LeadingDenseLayers < spec.LayerCount)
        {
            if (spec.ExpertCount <= 0) throw new ArgumentException("deepseek2 expert layers need ExpertCount > 0 (or LeadingDenseLayers = LayerCount)");
            if (spec.SharedExpertFeedForwardLength is { } s && (s <= 0 || s % ExpertFf(spec) != 0))
                throw new ArgumentException("deepseek2's shared expert is expert_shared_count experts wide: a positive multiple of the expert width");
            if (spec.ExpertGroupCount > 1 && (spec.ExpertCount % spec.ExpertGroupCount != 0 || spec.ExpertGroupUsedCount <= 0 || spec.ExpertGroupUsedCount >= spec.ExpertGroupCount))
                throw new ArgumentException("expert groups must divide the experts and 0 < ExpertGroupUsedCount < ExpertGroupCount (llama.cpp asserts it)");
        }
    }

    public override void AddMetadata(GgufWriter writer, TestModelSpec spec)
    {
        const string a = "deepseek2";
        int key = spec.NopeHeadDim + spec.RopeHeadDim, value = spec.ValueHeadDim;
        writer.Add($"{a}.leading_dense_block_count", (uint)spec.LeadingDenseLayers)
              // llama.cpp requires the key unless the layer count says "lite"; 0 selects the direct attn_q.
              .Add($"{a}.attention.q_lora_rank", (uint)(spec.QueryLoraRank ?? 0))
              .Add($"{a}.attention.kv_lora_rank", (uint)spec.KvLoraRank);
        if (spec.LegacyKvB)
        {
            writer.Add($"{a}.attention.key_length", (uint)key)
                  .Add($"{a}.attention.value_length", (uint)value);
        }
        else
        {
            // As convert_hf_to_gguf writes MLA: the cache's MQA sizes plus the decompressed ones.
            writer.Add($"{a}.attention.key_length", (uint)(spec.KvLoraRank + spec.RopeHeadDim))
                  .Add($"{a}.attention.value_length", (uint)spec.KvLoraRank)
                  .Add($"{a}.attention.key_length_mla", (uint)key)
                  .Add($"{a}.attention.value_length_mla", (uint)value);
        }
        writer.Add($"{a}.expert_feed_forward_length", (uint)ExpertFf(spec))
              .Add($"{a}.expert_shared_count", (uint)SharedCount(spec))
              .Add($"{a}.expert_weights_scale", spec.ExpertWeightsScale == 0f ? 1f : spec.ExpertWeightsScale)
              .Add($"{a}.expert_weights_norm", spec.ExpertWeightsNorm);
        if (spec.ExpertCount > 0)
            writer.Add($"{a}.expert_count", (uint)spec.ExpertCount).Add($"{a}.expert_used_count", (uint)spec.ExpertUsedCount);
        if (spec.ExpertGatingFunc > 0) writer.Add($"{a}.expert_gating_func", (uint)spec.ExpertGatingFunc);
        if (spec.ExpertGroupCount > 0)
            writer.Add($"{a}.expert_group_count", (uint)spec.ExpertGroupCount).Add($"{a}.expert_group_used_count", (uint)spec.ExpertGroupUsedCount);
        if (spec.RopeYarnFactor > 0f)
        {
            writer.Add($"{a}.rope.scaling.type", "yarn")
                  .Add($"{a}.rope.scaling.factor", spec.RopeYarnFactor)
                  .Add($"{a}.rope.scaling.original_context_length", (uint)(spec.RopeYarnOriginalContext ?? spec.ContextLength))
                  .Add($"{a}.rope.scaling.yarn_log_multiplier", spec.RopeYarnLogMultiplier);
        }
    }

    public override void AddLayer(GgufWriter writer, TestModelSpec spec, int layer, TestTensors random)
    {
        long embd = spec.EmbeddingLength, heads = spec.HeadCount, kvr = spec.KvLoraRank;
        long nope = spec.NopeHeadDim, rope = spec.RopeHeadDim, v = spec.ValueHeadDim, qWidth = heads * (nope + rope);
        var p = $"blk.{layer}.";
        writer.AddTensor(p + "attn_norm.weight", [embd], TestTensors.Ones);
        if (spec.QueryLoraRank is { } qr)
        {
            writer.AddTensor(p + "attn_q_a.weight", [embd, qr], random.Uniform(p + "attn_q_a.weight"));
            writer.AddTensor(p + "attn_q_a_norm.weight", [qr], TestTensors.Ones);
            writer.AddTensor(p + "attn_q_b.weight", [qr, qWidth], random.Uniform(p + "attn_q_b.weight"));
        }
        else
        {
            writer.AddTensor(p + "attn_q.weight", [embd, qWidth], random.Uniform(p + "attn_q.weight"));
        }
        writer.AddTensor(p + "attn_kv_a_mqa.weight", [embd, kvr + rope], random.Uniform(p + "attn_kv_a_mqa.weight"));
        writer.AddTensor(p + "attn_kv_a_norm.weight", [kvr], TestTensors.Ones);

        var kvB = random.Uniform(p + "attn_kv_b.weight");
        if (spec.LegacyKvB)
        {
            writer.AddTensor(p + "attn_kv_b.weight", [kvr, heads * (nope + v)], kvB);
        }
        else
        {
            // convert_hf_to_gguf's split: per head, k_b = kv_b's nope rows transposed, v_b = its value rows.
            writer.AddTensor(p + "attn_k_b.weight", [nope, kvr, heads], data =>
            {
                var full = Logical(kvB, kvr * heads * (nope + v));
                for (long h = 0; h < heads; h++)
                    for (long j = 0; j < kvr; j++)
                        for (long i = 0; i < nope; i++)
                            data[(int)((h * kvr + j) * nope + i)] = full[(h * (nope + v) + i) * kvr + j];
            });
            writer.AddTensor(p + "attn_v_b.weight", [kvr, v, heads], data =>
            {
                var full = Logical(kvB, kvr * heads * (nope + v));
                for (long h = 0; h < heads; h++)
                    for (long i = 0; i < v; i++)
                        for (long j = 0; j < kvr; j++)
                            data[(int)((h * v + i) * kvr + j)] = full[(h * (nope + v) + nope + i) * kvr + j];
            });
        }
        writer.AddTensor(p + "attn_output.weight", [heads * v, embd], random.Uniform(p + "attn_output.weight"));
        writer.AddTensor(p + "ffn_norm.weight", [embd], TestTensors.Ones);

        if (layer < spec.LeadingDenseLayers)
        {
            long ff = spec.FeedForwardLength;
            writer.AddTensor(p + "ffn_gate.weight", [embd, ff], random.Uniform(p + "ffn_gate.weight"));
            writer.AddTensor(p + "ffn_up.weight", [embd, ff], random.Uniform(p + "ffn_up.weight"));
            writer.AddTensor(p + "ffn_down.weight", [ff, embd], random.Uniform(p + "ffn_down.weight"));
            return;
        }
        long n = spec.ExpertCount, ffe = ExpertFf(spec), ffs = ffe * SharedCount(spec);
        writer.AddTensor(p + "ffn_gate_inp.weight", [embd, n], random.Uniform(p + "ffn_gate_inp.weight"));
        if (spec.ExpertSelectionBias) writer.AddTensor(p + "exp_probs_b.bias", [n], random.Uniform(p + "exp_probs_b.bias"));
        writer.AddTensor(p + "ffn_gate_exps.weight", [embd, ffe, n], random.Uniform(p + "ffn_gate_exps.weight"));
        writer.AddTensor(p + "ffn_up_exps.weight", [embd, ffe, n], random.Uniform(p + "ffn_up_exps.weight"));
        writer.AddTensor(p + "ffn_down_exps.weight", [ffe, embd, n], random.Uniform(p + "ffn_down_exps.weight"));
        writer.AddTensor(p + "ffn_gate_shexp.weight", [embd, ffs], random.Uniform(p + "ffn_gate_shexp.weight"));
        writer.AddTensor(p + "ffn_up_shexp.weight", [embd, ffs], random.Uniform(p + "ffn_up_shexp.weight"));
        writer.AddTensor(p + "ffn_down_shexp.weight", [ffs, embd], random.Uniform(p + "ffn_down_shexp.weight"));
    }

    private static float[] Logical(GgufWriter.TensorFiller fill, long length)
    {
        var values = new float[length];
        fill(values);
        return values;
    }
}
