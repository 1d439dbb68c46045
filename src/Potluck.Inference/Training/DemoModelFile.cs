using LLama.Native;
using Potluck.Inference.Models;

namespace Potluck.Inference.Training;

/// <summary>
/// The demo model's GGUF layout (a llama-architecture file llama.cpp and the engine load) and its generated
/// initial weights: uniform, deterministic (SplitMix64 seeded by the config's seed and each tensor's name).
/// </summary>
public static class DemoModelFile
{
    public const string Name = "potluck-demo";

    /// <summary>One tensor: name, shape in ggml order (ne[0] first) and the initial standard deviation (0 = norm, all ones).</summary>
    public sealed record TensorSpec(string Name, long[] Shape, float InitStd)
    {
        public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
    }

    public static IReadOnlyList<TensorSpec> Tensors(DemoModelConfig c)
    {
        long e = c.EmbeddingLength, ff = c.FeedForwardLength, v = c.VocabSize;
        var std = c.InitScale;
        var residual = std / MathF.Sqrt(2f * c.LayerCount);
        var list = new List<TensorSpec>
        {
            new("token_embd.weight", [e, v], std),
            new("output_norm.weight", [e], 0),
            new("output.weight", [e, v], std),
        };
        for (var l = 0; l < c.LayerCount; l++)
        {
            var p = $"blk.{l}.";
            list.Add(new(p + "attn_norm.weight", [e], 0));
            list.Add(new(p + "attn_q.weight", [e, e], std));
            list.Add(new(p + "attn_k.weight", [e, e], std));
            list.Add(new(p + "attn_v.weight", [e, e], std));
            list.Add(new(p + "attn_output.weight", [e, e], residual));
            list.Add(new(p + "ffn_norm.weight", [e], 0));
            list.Add(new(p + "ffn_gate.weight", [e, ff], std));
            list.Add(new(p + "ffn_up.weight", [e, ff], std));
            list.Add(new(p + "ffn_down.weight", [ff, e], residual));
        }
        return list;
    }

    /// <summary>The generated initial values of one tensor.</summary>
    public static void FillInitial(DemoModelConfig config, TensorSpec tensor, Span<float> data)
    {
        if (tensor.InitStd == 0)
        {
            data.Fill(1f);
            return;
        }
        var rng = new SplitMix64(SplitMix64.Derive(config.Seed, tensor.Name));
        var bound = tensor.InitStd * MathF.Sqrt(3f);
        for (var i = 0; i < data.Length; i++) data[i] = rng.NextSymmetric(bound);
    }

    /// <summary>The description the untrained initial model carries.</summary>
    public const string InitialDescription = "untrained initial demo model (generated weights)";

    /// <summary>
    /// Writes the untrained initial model of a training run, given the run's result: the vocabulary is read from
    /// <paramref name="trainedPath"/> and the weights are generated from <paramref name="config"/>'s seed. With the
    /// default config this is byte for byte the file `train-demo` started from; no corpus is needed.
    /// </summary>
    public static void WriteInitialFrom(string trainedPath, string path, DemoModelConfig? config = null) =>
        Write(path, config ?? new DemoModelConfig(), SubwordVocabulary.FromGguf(Gguf.GgufFile.Read(trainedPath)), description: InitialDescription);

    /// <summary>
    /// Writes an F32 GGUF. <paramref name="weights"/> supplies each tensor's values; null writes the generated
    /// initial model (the untrained starting point).
    /// </summary>
    public static void Write(string path, DemoModelConfig config, SubwordVocabulary vocabulary,
        Func<TensorSpec, float[]>? weights = null, string? description = null)
    {
        config.Validate();
        if (vocabulary.Size != config.VocabSize)
            throw new ArgumentException($"vocabulary has {vocabulary.Size} entries; the config wants {config.VocabSize}");
        const string arch = "llama";
        var writer = new GgufWriter()
            .Add("general.architecture", arch)
            .Add("general.name", Name)
            .Add("general.file_type", (uint)LLamaFtype.ALL_F32)
            .Add($"{arch}.context_length", (uint)config.ContextLength)
            .Add($"{arch}.embedding_length", (uint)config.EmbeddingLength)
            .Add($"{arch}.block_count", (uint)config.LayerCount)
            .Add($"{arch}.feed_forward_length", (uint)config.FeedForwardLength)
            .Add($"{arch}.attention.head_count", (uint)config.HeadCount)
            .Add($"{arch}.attention.head_count_kv", (uint)config.HeadCount)
            .Add($"{arch}.attention.layer_norm_rms_epsilon", config.RmsNormEps)
            .Add($"{arch}.rope.freq_base", config.RopeFreqBase)
            .Add($"{arch}.rope.dimension_count", (uint)config.HeadDim)
            .Add($"{arch}.vocab_size", (uint)config.VocabSize);
        if (description is not null) writer.Add("general.description", description);
        vocabulary.WriteTo(writer, TestModelGenerator.ChatMlTemplate);
        foreach (var tensor in Tensors(config))
        {
            var t = tensor;
            writer.AddTensor(t.Name, t.Shape, data =>
            {
                if (weights is null) FillInitial(config, t, data);
                else weights(t).AsSpan().CopyTo(data);
            });
        }
        writer.WriteTo(path);
    }
}
