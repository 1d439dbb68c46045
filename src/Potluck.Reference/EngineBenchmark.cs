using System.Diagnostics;
using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;

namespace Potluck.Reference;

/// <summary>Settings for <see cref="EngineBenchmark"/>.</summary>
public sealed record EngineBenchmarkOptions
{
    /// <summary>Model to measure; null generates the 2048-wide, 8-layer llama model.</summary>
    public string? ModelPath { get; init; }
    public IReadOnlyList<GgmlType> Types { get; init; } = [GgmlType.Q8_0, GgmlType.Q4_K];
    public int PromptTokens { get; init; } = 128;
    public int DecodeTokens { get; init; } = 16;
    /// <summary>Interleaved rounds; each runs both engines once, alternating which goes first.</summary>
    public int Rounds { get; init; } = 5;
    public int Threads { get; init; } = Math.Max(1, Environment.ProcessorCount);
    /// <summary>How many spans the model is split into on the Potluck side (all in this process).</summary>
    public int Spans { get; init; } = 1;
    public required string CacheDirectory { get; init; }

    /// <summary>The model the issue asks to benchmark: 2048 wide, 8 layers, 32 heads, 8 KV heads, n_ff 5632.</summary>
    public static TestModelSpec BenchmarkSpec { get; } = new()
    {
        Architecture = "llama",
        EmbeddingLength = 2048,
        LayerCount = 8,
        HeadCount = 32,
        KvHeadCount = 8,
        FeedForwardLength = 5632,
        ContextLength = 512,
        Seed = 2048,
    };
}

/// <summary>Median and minimum of one measured quantity, in milliseconds.</summary>
public sealed record Timing(double MedianMs, double MinMs)
{
    public static Timing Of(List<double> samples)
    {
        samples.Sort();
        var n = samples.Count;
        var median = n % 2 == 1 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
        return new Timing(median, samples[0]);
    }
}

/// <summary>
/// One weight type's figures. Ratios are llama.cpp time ÷ Potluck time, so 1.0 is parity and above 1 is faster.
/// </summary>
public sealed record EngineBenchmarkResult(
    GgmlType Type,
    string ModelPath,
    int PromptTokens,
    Timing LlamaCppPrefill,
    Timing SpanPrefill,
    Timing LlamaCppDecodePerToken,
    Timing SpanDecodePerToken,
    double PrefillRatioMedian,
    double PrefillRatioMin,
    double DecodeRatioMedian,
    double DecodeRatioMin,
    bool GreedyTokensMatch);

/// <summary>
/// llama.cpp (LLamaSharp) and the span engine on the same file, interleaved round by round in one process:
/// prefill of a fixed prompt, then greedy decode. Shared, noisy machines make absolute times unreliable, so the
/// result is reported as ratios of median and of minimum times.
/// </summary>
public static class EngineBenchmark
{
    public static IReadOnlyList<EngineBenchmarkResult> Run(EngineBenchmarkOptions options, IProgress<(string Stage, double Fraction)>? progress = null)
    {
        var results = new List<EngineBenchmarkResult>();
        foreach (var type in options.Types)
        {
            var path = options.ModelPath ?? TestModelGenerator.GetOrCreate(
                EngineBenchmarkOptions.BenchmarkSpec, type, options.CacheDirectory,
                new Progress<double>(f => progress?.Report(($"generating {type} model", f))));
            results.Add(RunOne(path, type, options, progress));
        }
        return results;
    }

    private static EngineBenchmarkResult RunOne(string path, GgmlType type, EngineBenchmarkOptions options,
        IProgress<(string Stage, double Fraction)>? progress)
    {
        var context = options.PromptTokens + options.DecodeTokens + 8;
        progress?.Report(($"loading {type}", 0));
        using var reference = new LlamaCppReference(path, context, options.Threads, batchSize: Math.Max(512, options.PromptTokens));
        using var model = GgufModel.Open(path);
        using var head = new ModelHead(model, options.Threads);
        var spans = Split(model, options.Spans, options.Threads);
        try
        {
            using var pipeline = new LocalPipeline(head, spans);
            var prompt = Prompt(options.PromptTokens, model.Info.VocabSize);
            var logits = new float[head.VocabSize];
            List<double> refPrefill = [], spanPrefill = [], refDecode = [], spanDecode = [];
            var match = true;

            // One untimed round of each warms caches, page faults and ggml's buffers.
            RunReference(reference, prompt, options.DecodeTokens, logits, null, null);
            RunSpans(pipeline, prompt, options.DecodeTokens, logits, null, null, "warmup");

            for (var round = 0; round < options.Rounds; round++)
            {
                progress?.Report(($"measuring {type}", (double)round / options.Rounds));
                List<int> a, b;
                if (round % 2 == 0)
                {
                    a = RunReference(reference, prompt, options.DecodeTokens, logits, refPrefill, refDecode);
                    b = RunSpans(pipeline, prompt, options.DecodeTokens, logits, spanPrefill, spanDecode, $"r{round}");
                }
                else
                {
                    b = RunSpans(pipeline, prompt, options.DecodeTokens, logits, spanPrefill, spanDecode, $"r{round}");
                    a = RunReference(reference, prompt, options.DecodeTokens, logits, refPrefill, refDecode);
                }
                match &= a.SequenceEqual(b);
            }
            progress?.Report(($"measuring {type}", 1));

            var rp = Timing.Of(refPrefill);
            var sp = Timing.Of(spanPrefill);
            var rd = Timing.Of(refDecode);
            var sd = Timing.Of(spanDecode);
            return new EngineBenchmarkResult(type, path, options.PromptTokens, rp, sp, rd, sd,
                rp.MedianMs / sp.MedianMs, rp.MinMs / sp.MinMs, rd.MedianMs / sd.MedianMs, rd.MinMs / sd.MinMs, match);
        }
        finally
        {
            foreach (var s in spans) s.Dispose();
        }
    }

    private static LayerSpan[] Split(GgufModel model, int count, int threads)
    {
        var layers = model.Info.LayerCount;
        count = Math.Clamp(count, 1, layers);
        var spans = new LayerSpan[count];
        for (var i = 0; i < count; i++)
            spans[i] = new LayerSpan(model, i * layers / count, (i + 1) * layers / count, new SpanOptions { Threads = threads });
        return spans;
    }

    /// <summary>A deterministic prompt of byte tokens (BOS first).</summary>
    private static int[] Prompt(int length, int vocab)
    {
        var tokens = new int[length];
        tokens[0] = Math.Min(1, vocab - 1);
        for (var i = 1; i < length; i++) tokens[i] = 3 + (i * 37 + 11) % Math.Max(1, Math.Min(256, vocab - 3));
        return tokens;
    }

    private static List<int> RunReference(LlamaCppReference reference, int[] prompt, int decode, float[] logits,
        List<double>? prefill, List<double>? perToken)
    {
        reference.Reset();
        var generated = new List<int>(decode);
        var sw = Stopwatch.StartNew();
        reference.Evaluate(prompt, logits);
        prefill?.Add(sw.Elapsed.TotalMilliseconds);
        for (var i = 0; i < decode; i++)
        {
            var next = LlamaCppReference.ArgMax(logits);
            generated.Add(next);
            sw.Restart();
            reference.Evaluate([next], logits);
            perToken?.Add(sw.Elapsed.TotalMilliseconds);
        }
        return generated;
    }

    private static List<int> RunSpans(LocalPipeline pipeline, int[] prompt, int decode, float[] logits,
        List<double>? prefill, List<double>? perToken, string session)
    {
        pipeline.OpenSession(session, prompt.Length + decode + 1);
        try
        {
            var generated = new List<int>(decode);
            var sw = Stopwatch.StartNew();
            pipeline.Evaluate(session, 0, prompt, logits);
            prefill?.Add(sw.Elapsed.TotalMilliseconds);
            var position = prompt.Length;
            for (var i = 0; i < decode; i++)
            {
                var next = LlamaCppReference.ArgMax(logits);
                generated.Add(next);
                sw.Restart();
                pipeline.Evaluate(session, position++, [next], logits);
                perToken?.Add(sw.Elapsed.TotalMilliseconds);
            }
            return generated;
        }
        finally
        {
            pipeline.CloseSession(session);
        }
    }
}
