using System.Diagnostics;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using Potluck.Inference.Reference;

namespace Potluck.Gateway.Bench;

/// <summary>What `potluck bench pool` measures against a running gateway.</summary>
/// <param name="GatewayUrl">The pool's gateway (e.g. a 3-node `potluck serve` on loopback).</param>
/// <param name="ModelPath">The same GGUF the pool serves; llama.cpp runs it whole in this process as the baseline.</param>
public sealed record PoolBenchmarkOptions(Uri GatewayUrl, string ModelPath, int PromptTokens = 64, int DecodeTokens = 64, int Runs = 5, int ReferenceThreads = 0)
{
    public void Validate()
    {
        if (PromptTokens < 1 || DecodeTokens < 2 || Runs < 1) throw new ArgumentException("need PromptTokens >= 1, DecodeTokens >= 2 and Runs >= 1");
    }
}

/// <summary>Median, min and max of one measured quantity over the runs.</summary>
public sealed record BenchFigure(double Median, double Min, double Max)
{
    public static BenchFigure Of(IReadOnlyList<double> values)
    {
        var sorted = values.Order().ToArray();
        var mid = sorted.Length / 2;
        var median = sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
        return new BenchFigure(median, sorted[0], sorted[^1]);
    }
}

/// <summary>Pool vs single-process llama.cpp on the same model in the same run. Ratios are pool / llama.cpp (decode: higher is better).</summary>
public sealed record PoolBenchmarkResult(
    string Model,
    int PromptTokens,
    int DecodeTokens,
    int Runs,
    BenchFigure PoolTimeToFirstTokenMs,
    BenchFigure PoolDecodeTokensPerSecond,
    BenchFigure ReferenceTimeToFirstTokenMs,
    BenchFigure ReferenceDecodeTokensPerSecond)
{
    /// <summary>Median pool decode speed over median llama.cpp decode speed (target ≥ 0.9).</summary>
    public double DecodeRatio => PoolDecodeTokensPerSecond.Median / ReferenceDecodeTokensPerSecond.Median;

    /// <summary>Median pool time to first token over llama.cpp's (lower is better).</summary>
    public double TimeToFirstTokenRatio => PoolTimeToFirstTokenMs.Median / ReferenceTimeToFirstTokenMs.Median;
}

/// <summary>
/// End-to-end benchmark: streams fixed-length greedy completions (ignore_eos) through the gateway and times the first
/// token and the decode rate, then runs the same prompt and token count through llama.cpp in this process.
/// </summary>
public static class PoolBenchmark
{
    public static async Task<PoolBenchmarkResult> RunAsync(PoolBenchmarkOptions options, IProgress<string>? progress, CancellationToken ct)
    {
        options.Validate();
        using var http = new HttpClient { BaseAddress = options.GatewayUrl, Timeout = TimeSpan.FromMinutes(5) };
        using var models = JsonDocument.Parse(await http.GetStringAsync("v1/models", ct));
        var model = models.RootElement.GetProperty("data")[0].GetProperty("id").GetString()!;
        var prompt = PromptTokens(options.PromptTokens);

        // One warm-up each so first-call costs (connections, graph allocation) are not measured.
        progress?.Report("pool: warm-up");
        await PoolRunAsync(http, model, prompt, 4, ct);
        var poolTtft = new List<double>();
        var poolDecode = new List<double>();
        for (var run = 1; run <= options.Runs; run++)
        {
            progress?.Report($"pool: run {run}/{options.Runs}");
            var (ttft, tps) = await PoolRunAsync(http, model, prompt, options.DecodeTokens, ct);
            poolTtft.Add(ttft);
            poolDecode.Add(tps);
        }

        var refTtft = new List<double>();
        var refDecode = new List<double>();
        var threads = options.ReferenceThreads > 0 ? options.ReferenceThreads : Environment.ProcessorCount;
        using (var reference = new LlamaCppReference(options.ModelPath, contextSize: options.PromptTokens + options.DecodeTokens + 8, threads: threads))
        {
            var logits = new float[reference.VocabSize];
            for (var run = 0; run <= options.Runs; run++)
            {
                ct.ThrowIfCancellationRequested();
                progress?.Report(run == 0 ? "llama.cpp: warm-up" : $"llama.cpp: run {run}/{options.Runs}");
                reference.Reset();
                var started = Stopwatch.GetTimestamp();
                reference.Evaluate(prompt, logits);
                var next = LlamaCppReference.ArgMax(logits);
                var first = Stopwatch.GetTimestamp();
                for (var i = 1; i < options.DecodeTokens; i++)
                {
                    reference.Evaluate([next], logits);
                    next = LlamaCppReference.ArgMax(logits);
                }
                var end = Stopwatch.GetTimestamp();
                if (run == 0) continue;
                refTtft.Add(Stopwatch.GetElapsedTime(started, first).TotalMilliseconds);
                refDecode.Add((options.DecodeTokens - 1) / Stopwatch.GetElapsedTime(first, end).TotalSeconds);
            }
        }
        return new PoolBenchmarkResult(model, options.PromptTokens, options.DecodeTokens, options.Runs,
            BenchFigure.Of(poolTtft), BenchFigure.Of(poolDecode), BenchFigure.Of(refTtft), BenchFigure.Of(refDecode));
    }

    /// <summary>A fixed, varied prompt of byte-range token ids (valid in every vocabulary the generator writes).</summary>
    private static int[] PromptTokens(int count)
    {
        var tokens = new int[count];
        tokens[0] = 1;
        for (var i = 1; i < count; i++) tokens[i] = 3 + 'a' + (i * 7 % 26);
        return tokens;
    }

    /// <summary>One streamed completion: time to the first chunk, and decode tokens/s from first chunk to the end.</summary>
    private static async Task<(double TtftMs, double TokensPerSecond)> PoolRunAsync(HttpClient http, string model, int[] prompt, int tokens, CancellationToken ct)
    {
        var body = JsonSerializer.Serialize(new
        {
            model, prompt, max_tokens = tokens, temperature = 0, ignore_eos = true, stream = true,
            stream_options = new { include_usage = true },
        });
        var started = Stopwatch.GetTimestamp();
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
        if (!response.IsSuccessStatusCode)
            throw new InvalidOperationException($"the gateway answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync(ct)}");
        long first = 0, end = 0;
        var generated = 0;
        await using var stream = await response.Content.ReadAsStreamAsync(ct);
        await foreach (var item in SseParser.Create(stream).EnumerateAsync(ct))
        {
            if (item.Data == "[DONE]") break;
            if (first == 0) first = Stopwatch.GetTimestamp();
            using var chunk = JsonDocument.Parse(item.Data);
            if (chunk.RootElement.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
                generated = usage.GetProperty("completion_tokens").GetInt32();
            else end = Stopwatch.GetTimestamp();
        }
        if (first == 0 || generated < 2) throw new InvalidOperationException($"the gateway streamed {generated} tokens; expected {tokens}");
        // Text chunks can trail tokens (held-back partial characters); the finish chunk marks the last token.
        return (Stopwatch.GetElapsedTime(started, first).TotalMilliseconds, (generated - 1) / Stopwatch.GetElapsedTime(first, end).TotalSeconds);
    }
}
