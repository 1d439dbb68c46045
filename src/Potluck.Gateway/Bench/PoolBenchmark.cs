using System.Diagnostics;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using Potluck.Reference;

namespace Potluck.Gateway.Bench;

/// <summary>What `potluck bench pool` measures against a running gateway.</summary>
/// <param name="GatewayUrl">The pool's gateway (e.g. a 3-node `potluck serve` on loopback).</param>
/// <param name="ModelPath">The same GGUF the pool serves; llama.cpp runs it whole in this process as the baseline.</param>
/// <param name="WarmupTokens">Tokens streamed through the pool before measuring: every process of a fresh pool JITs its hot
/// path to tier 1 during its first few hundred steps (measured: about 1 s of JIT CPU per process), which is not steady state.</param>
public sealed record PoolBenchmarkOptions(Uri GatewayUrl, string ModelPath, int PromptTokens = 64, int DecodeTokens = 64, int Runs = 5, int ReferenceThreads = 0,
    int WarmupTokens = 512)
{
    public void Validate()
    {
        if (PromptTokens < 1 || DecodeTokens < 2 || Runs < 1 || WarmupTokens < 0)
            throw new ArgumentException("need PromptTokens >= 1, DecodeTokens >= 2, Runs >= 1 and WarmupTokens >= 0");
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
    BenchFigure ReferenceDecodeTokensPerSecond,
    BenchFigure? PairedDecodeRatio = null)
{
    // PairedDecodeRatio: pool / llama.cpp decode speed of each run with the llama.cpp run right after it (median, min, max).

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

        var poolTtft = new List<double>();
        var poolDecode = new List<double>();
        var refTtft = new List<double>();
        var refDecode = new List<double>();
        var threads = options.ReferenceThreads > 0 ? options.ReferenceThreads : Environment.ProcessorCount;
        using var reference = new LlamaCppReference(options.ModelPath, contextSize: options.PromptTokens + options.DecodeTokens + 8, threads: threads);
        var logits = new float[reference.VocabSize];

        // Warm-up, so first-call costs (connections, graph allocation, tier-1 JIT in every pool process) are not measured.
        for (var warmed = 0; warmed < Math.Max(1, options.WarmupTokens);)
        {
            progress?.Report($"warm-up: {warmed}/{options.WarmupTokens} tokens");
            var tokens = Math.Clamp(options.WarmupTokens - warmed, 2, Math.Max(2, options.DecodeTokens));
            await PoolRunAsync(http, model, prompt, tokens, ct);
            warmed += tokens;
        }
        ReferenceRun(reference, prompt, options.DecodeTokens, logits);

        // Pool and llama.cpp runs alternate, so load from elsewhere on the machine hits both sides alike.
        for (var run = 1; run <= options.Runs; run++)
        {
            progress?.Report($"pool: run {run}/{options.Runs}");
            var (ttft, tps) = await PoolRunAsync(http, model, prompt, options.DecodeTokens, ct);
            poolTtft.Add(ttft);
            poolDecode.Add(tps);
            ct.ThrowIfCancellationRequested();
            progress?.Report($"llama.cpp: run {run}/{options.Runs}");
            var (refFirst, refTps) = ReferenceRun(reference, prompt, options.DecodeTokens, logits);
            refTtft.Add(refFirst);
            refDecode.Add(refTps);
        }
        return new PoolBenchmarkResult(model, options.PromptTokens, options.DecodeTokens, options.Runs,
            BenchFigure.Of(poolTtft), BenchFigure.Of(poolDecode), BenchFigure.Of(refTtft), BenchFigure.Of(refDecode),
            BenchFigure.Of(poolDecode.Select((pool, i) => pool / refDecode[i]).ToArray()));
    }

    /// <summary>The same greedy run through llama.cpp on the whole model: time to first token and decode tokens/s.</summary>
    private static (double TtftMs, double TokensPerSecond) ReferenceRun(LlamaCppReference reference, int[] prompt, int tokens, float[] logits)
    {
        reference.Reset();
        var started = Stopwatch.GetTimestamp();
        reference.Evaluate(prompt, logits);
        var next = LlamaCppReference.ArgMax(logits);
        var first = Stopwatch.GetTimestamp();
        for (var i = 1; i < tokens; i++)
        {
            reference.Evaluate([next], logits);
            next = LlamaCppReference.ArgMax(logits);
        }
        var end = Stopwatch.GetTimestamp();
        return (Stopwatch.GetElapsedTime(started, first).TotalMilliseconds, (tokens - 1) / Stopwatch.GetElapsedTime(first, end).TotalSeconds);
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
