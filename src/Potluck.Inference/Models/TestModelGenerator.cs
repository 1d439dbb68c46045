using System.Collections.Concurrent;
using LLama;
using LLama.Exceptions;
using LLama.Native;
using Potluck.Inference.Gguf;
using Potluck.Inference.Text;

namespace Potluck.Inference.Models;

/// <summary>Raised when llama.cpp cannot quantize a generated model.</summary>
public sealed class ModelQuantizationException(string message, Exception? inner = null) : EngineException(message, inner);

/// <summary>
/// Writes deterministic random GGUF models that llama.cpp loads as real Llama / Mistral / Qwen2 / Qwen3 files,
/// and quantizes them with llama.cpp's own quantizer. Real weights cannot be downloaded where tests run.
/// </summary>
public static class TestModelGenerator
{
    /// <summary>Chat template stored in every generated model: ChatML, which llama_chat_apply_template detects by "&lt;|im_start|&gt;".</summary>
    public const string ChatMlTemplate =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    /// <summary>Token ids of the generated vocabulary.</summary>
    public static class Vocab
    {
        public const int Unknown = 0;
        public const int Bos = 1;
        public const int Eos = 2;
        /// <summary>&lt;0x00&gt;; byte b is token FirstByte + b.</summary>
        public const int FirstByte = 3;
        /// <summary>"▁" (U+2581), SentencePiece's space: without it a space would decode as the literal bytes of '▁'.</summary>
        public const int Space = FirstByte + 256;
        public const int ImStart = Space + 1;
        /// <summary>&lt;|im_end|&gt;, which llama.cpp treats as an end-of-generation token.</summary>
        public const int ImEnd = Space + 2;
        public const int Size = ImEnd + 1;
    }

    private static readonly ConcurrentDictionary<string, Lock> PathLocks = new(StringComparer.Ordinal);

    /// <summary>
    /// Writes an F32 model for <paramref name="spec"/>. Norm weights are exactly 1, every other tensor is uniform
    /// with standard deviation WeightScale (bound √3·WeightScale) from a SplitMix64 stream seeded by (Seed, tensor name).
    /// </summary>
    public static void WriteF32(TestModelSpec spec, string path, IProgress<double>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        spec.Validate();
        BuildWriter(spec).WriteTo(path, progress);
    }

    /// <summary>
    /// Quantizes <paramref name="sourcePath"/> with llama_model_quantize. K-quant targets use llama.cpp's "_M" mixes
    /// (Q4_K → Q4_K_M, which also holds Q6_K tensors), as published GGUFs do. The output tensor is quantized too.
    /// </summary>
    public static void Quantize(string sourcePath, string destinationPath, GgmlType type)
    {
        if (!File.Exists(sourcePath)) throw new FileNotFoundException("model to quantize not found", sourcePath);
        if (type == GgmlType.F32)
        {
            File.Copy(sourcePath, destinationPath, overwrite: true);
            return;
        }

        var ftype = ToFileType(type);
        LlamaApi.EnsureReady();
        bool ok;
        try
        {
            ok = ftype == LLamaFtype.LLAMA_FTYPE_MOSTLY_MXFP4_MOE
                ? QuantizeDirect(sourcePath, destinationPath, ftype)
                : LLamaQuantizer.Quantize(sourcePath, destinationPath, ftype, nthread: Math.Max(1, Environment.ProcessorCount),
                    allowRequantize: true, quantizeOutputTensor: true);
        }
        catch (Exception e) when (e is ArgumentException or RuntimeError)
        {
            throw new ModelQuantizationException($"llama.cpp could not quantize '{sourcePath}' to {type}: {e.Message}", e);
        }
        if (!ok || !File.Exists(destinationPath))
            throw new ModelQuantizationException($"llama.cpp could not quantize '{sourcePath}' to {type} (llama_model_quantize failed; see the native log)");
    }

    /// <summary>
    /// llama_model_quantize with LLamaQuantizer's settings, for file types LLamaQuantizer's own list refuses
    /// (it predates MXFP4_MOE, which the b10221 quantizer implements).
    /// </summary>
    private static bool QuantizeDirect(string sourcePath, string destinationPath, LLamaFtype ftype)
    {
        var parameters = LLamaModelQuantizeParams.Default();
        parameters.ftype = ftype;
        parameters.nthread = Math.Max(1, Environment.ProcessorCount);
        parameters.allow_requantize = true;
        parameters.quantize_output_tensor = true;
        return NativeApi.llama_model_quantize(sourcePath, destinationPath, ref parameters) == 0;
    }

    /// <summary>
    /// Returns the path of the model for (spec, type) under <paramref name="cacheDirectory"/>, generating it once.
    /// Files are named by a hash of spec and type and appear atomically (temp file + rename), so concurrent
    /// callers, even in other processes, never see a partial file.
    /// </summary>
    public static string GetOrCreate(TestModelSpec spec, GgmlType type, string cacheDirectory, IProgress<double>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        spec.Validate();
        if (type != GgmlType.F32) ToFileType(type); // reject unsupported types before doing any work
        Directory.CreateDirectory(cacheDirectory);
        var path = Path.Combine(cacheDirectory, FileName(spec, type));
        if (File.Exists(path))
        {
            progress?.Report(1.0);
            return path;
        }

        lock (PathLocks.GetOrAdd(path, _ => new Lock()))
        {
            if (File.Exists(path))
            {
                progress?.Report(1.0);
                return path;
            }

            var temp = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
            try
            {
                if (type == GgmlType.F32)
                {
                    WriteF32(spec, temp, progress);
                }
                else
                {
                    // The F32 source is cached too: tests usually want several quant types of one spec.
                    var source = GetOrCreate(spec, GgmlType.F32, cacheDirectory, Scale(progress, 0, 0.5));
                    Quantize(source, temp, type);
                }
                File.Move(temp, path, overwrite: true);
            }
            finally
            {
                if (File.Exists(temp)) File.Delete(temp);
            }
            progress?.Report(1.0);
            return path;
        }
    }

    /// <summary>The cache file name: readable prefix plus the spec hash.</summary>
    public static string FileName(TestModelSpec spec, GgmlType type) =>
        $"{spec.Architecture}-{spec.EmbeddingLength}x{spec.LayerCount}-{type.ToString().ToLowerInvariant()}-{spec.CacheKey(type)}.gguf";

    internal static LLamaFtype ToFileType(GgmlType type) => type switch
    {
        GgmlType.F32 => LLamaFtype.ALL_F32,
        GgmlType.F16 => LLamaFtype.MOSTLY_F16,
        GgmlType.BF16 => LLamaFtype.MOSTLY_BF16,
        GgmlType.Q8_0 => LLamaFtype.MOSTLY_Q8_0,
        GgmlType.Q4_0 => LLamaFtype.MOSTLY_Q4_0,
        GgmlType.Q4_1 => LLamaFtype.MOSTLY_Q4_1,
        GgmlType.Q5_0 => LLamaFtype.MOSTLY_Q5_0,
        GgmlType.Q5_1 => LLamaFtype.MOSTLY_Q5_1,
        GgmlType.Q2_K => LLamaFtype.MOSTLY_Q2_K,
        GgmlType.Q3_K => LLamaFtype.MOSTLY_Q3_K_M,
        GgmlType.Q4_K => LLamaFtype.MOSTLY_Q4_K_M,
        GgmlType.Q5_K => LLamaFtype.MOSTLY_Q5_K_M,
        GgmlType.Q6_K => LLamaFtype.MOSTLY_Q6_K,
        GgmlType.IQ4_NL => LLamaFtype.MOSTLY_IQ4_NL,
        // llama.cpp's MXFP4_MOE: expert tensors MXFP4, the other matrices Q8_0 (as published gpt-oss files).
        GgmlType.MXFP4 => LLamaFtype.LLAMA_FTYPE_MOSTLY_MXFP4_MOE,
        GgmlType.IQ4_XS => LLamaFtype.MOSTLY_IQ4_XS,
        _ => throw new ArgumentException($"the generator cannot produce {type} models", nameof(type)),
    };

    /// <summary>The GGUF architecture string the spec's family writes (a "mistral" spec writes a llama file).</summary>
    public static string GgufArchitecture(string architecture) => TestFamilyWriters.Get(architecture).GgufArchitecture;

    private static GgufWriter BuildWriter(TestModelSpec spec)
    {
        var family = TestFamilyWriters.Get(spec.Architecture);
        var arch = family.GgufArchitecture;
        var headDim = spec.EffectiveHeadDim;
        long embd = spec.EmbeddingLength, vocab = spec.VocabSize ?? Vocab.Size;

        var writer = new GgufWriter()
            .Add("general.architecture", arch)
            .Add("general.name", $"potluck-test-{family.NameTag}-{spec.EmbeddingLength}x{spec.LayerCount}-s{spec.Seed}")
            .Add("general.file_type", (uint)LLamaFtype.ALL_F32)
            .Add($"{arch}.context_length", (uint)spec.ContextLength)
            .Add($"{arch}.embedding_length", (uint)spec.EmbeddingLength)
            .Add($"{arch}.block_count", (uint)spec.LayerCount)
            .Add($"{arch}.feed_forward_length", (uint)spec.FeedForwardLength)
            .Add($"{arch}.attention.head_count", (uint)spec.HeadCount)
            .Add($"{arch}.attention.head_count_kv", (uint)spec.KvHeadCount)
            .Add($"{arch}.attention.layer_norm_rms_epsilon", spec.RmsNormEps)
            .Add($"{arch}.rope.freq_base", spec.RopeFreqBase)
            .Add($"{arch}.rope.dimension_count", (uint)family.RopeDimensions(spec));
        family.AddMetadata(writer, spec);
        AddTokenizer(writer, spec.ChatTemplate, (int)vocab);

        var random = new TestTensors(spec.Seed, spec.WeightScale);
        writer.AddTensor("token_embd.weight", [embd, vocab], random.Uniform("token_embd.weight"));
        writer.AddTensor("output_norm.weight", [embd], TestTensors.Ones);
        if (!spec.TiedEmbeddings) writer.AddTensor("output.weight", [embd, vocab], random.Uniform("output.weight"));
        if (spec.RopeFreqFactors) writer.AddTensor("rope_freqs.weight", [headDim / 2], RopeFactors);
        family.AddGlobalTensors(writer, spec, random);
        for (var layer = 0; layer < spec.LayerCount; layer++) family.AddLayer(writer, spec, layer, random);
        return writer;
    }

    /// <summary>SentencePiece "llama" vocabulary: specials, the 256 byte tokens, the space piece and ChatML markers.</summary>
    private static void AddTokenizer(GgufWriter writer, string? chatTemplate, int size)
    {
        const int normal = 1, unknown = 2, control = 3, bytes = 6;
        var tokens = new string[size];
        var types = new int[size];
        var scores = new float[size];
        // Beyond the minimal vocabulary: distinct plain pieces, least likely last.
        for (var id = Vocab.Size; id < size; id++) (tokens[id], types[id], scores[id]) = ($"\u2581tok{id}", normal, -id);
        (tokens[Vocab.Unknown], types[Vocab.Unknown]) = ("<unk>", unknown);
        (tokens[Vocab.Bos], types[Vocab.Bos]) = ("<s>", control);
        (tokens[Vocab.Eos], types[Vocab.Eos]) = ("</s>", control);
        for (var b = 0; b < 256; b++)
            (tokens[Vocab.FirstByte + b], types[Vocab.FirstByte + b]) = ($"<0x{b:X2}>", bytes);
        (tokens[Vocab.Space], types[Vocab.Space]) = ("\u2581", normal);
        (tokens[Vocab.ImStart], types[Vocab.ImStart]) = ("<|im_start|>", control);
        (tokens[Vocab.ImEnd], types[Vocab.ImEnd]) = ("<|im_end|>", control);

        writer.Add("tokenizer.ggml.model", "llama")
              .Add("tokenizer.ggml.tokens", tokens)
              .Add("tokenizer.ggml.scores", scores)
              .Add("tokenizer.ggml.token_type", types)
              .Add("tokenizer.ggml.bos_token_id", (uint)Vocab.Bos)
              .Add("tokenizer.ggml.eos_token_id", (uint)Vocab.Eos)
              .Add("tokenizer.ggml.unknown_token_id", (uint)Vocab.Unknown)
              .Add("tokenizer.ggml.add_bos_token", true)
              .Add("tokenizer.ggml.add_eos_token", false)
              // No implicit leading space, so encode/decode round-trips text exactly.
              .Add("tokenizer.ggml.add_space_prefix", false);
        if (chatTemplate is not null) writer.Add("tokenizer.chat_template", chatTemplate);
    }

    /// <summary>Llama-3-like frequency factors: 1 for the fastest-rotating pairs, rising to 4 for the slowest.</summary>
    private static void RopeFactors(Span<float> data)
    {
        for (var i = 0; i < data.Length; i++)
            data[i] = data.Length == 1 ? 1f : 1f + 3f * i / (data.Length - 1);
    }

    private static IProgress<double>? Scale(IProgress<double>? progress, double from, double to) =>
        progress is null ? null : new Progress(v => progress.Report(from + (to - from) * v));

    /// <summary>Synchronous progress forwarding (System.Progress posts to a sync context, which reorders reports).</summary>
    private sealed class Progress(Action<double> report) : IProgress<double>
    {
        public void Report(double value) => report(value);
    }
}
