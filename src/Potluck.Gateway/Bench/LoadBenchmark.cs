using System.Diagnostics;
using System.Net.Http.Headers;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using Potluck.Reference;

namespace Potluck.Gateway.Bench;

/// <summary>What `potluck bench load` runs: N sessions at once through a gateway vs llama.cpp decoding N sequences as one batch.</summary>
public sealed record LoadBenchmarkOptions
{
    public required Uri GatewayUrl { get; init; }
    /// <summary>The GGUF the pool serves; llama.cpp runs it whole in this process.</summary>
    public required string ModelPath { get; init; }
    /// <summary>Sessions started together in a round, one level after another.</summary>
    public required IReadOnlyList<int> Concurrency { get; init; }
    public int PromptTokens { get; init; } = 128;
    public int OutputTokens { get; init; } = 128;
    public int Rounds { get; init; } = 3;
    /// <summary>llama.cpp's threads (0: every core).</summary>
    public int Threads { get; init; }
    /// <summary>Sent as a Bearer token when the gateway requires keys.</summary>
    public string? ApiKey { get; init; }
    /// <summary>The most one session may take, from its request to its last chunk.</summary>
    public TimeSpan SessionTimeout { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>The longest wait for the response headers or for the next chunk.</summary>
    public TimeSpan StallTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Tokens streamed through the pool (one session) before anything is measured: tier-1 JIT in every process.</summary>
    public int WarmupTokens { get; init; } = 512;

    /// <summary>llama.cpp keeps at most this many sequences in one context (LLAMA_MAX_SEQ).</summary>
    public const int MaxConcurrency = 256;

    public void Validate()
    {
        if (Concurrency.Count == 0 || Concurrency.Any(n => n is < 1 or > MaxConcurrency))
            throw new ArgumentException($"every concurrency level must be in [1, {MaxConcurrency}]");
        if (PromptTokens < 1 || OutputTokens < 2 || Rounds < 1 || WarmupTokens < 0 || Threads < 0)
            throw new ArgumentException("need PromptTokens >= 1, OutputTokens >= 2, Rounds >= 1, WarmupTokens >= 0 and Threads >= 0");
        if (SessionTimeout <= TimeSpan.Zero || StallTimeout <= TimeSpan.Zero)
            throw new ArgumentException("the timeouts must be positive");
    }
}

/// <summary>One side's figures in one round.</summary>
/// <param name="AggregateTokensPerSecond">Every output token of the round over its wall time (all sessions start at 0, wall = the last token).</param>
/// <param name="DecodeTokensPerSecond">Decode only: the tokens after each session's first, over the mean of (last token - first token).</param>
/// <param name="TtftP50Ms">Time to first token over the sessions (llama.cpp: the batched prefill, the same for all).</param>
/// <param name="ItlP50Ms">Gaps between streamed chunks over every session (llama.cpp: the N-sequence decode steps).</param>
public sealed record LoadRoundFigures(
    int Sessions,
    int Errors,
    int OutputTokens,
    double WallMs,
    double AggregateTokensPerSecond,
    double DecodeTokensPerSecond,
    double TtftP50Ms,
    double TtftP95Ms,
    double ItlP50Ms,
    double ItlP95Ms);

/// <summary>One side at one concurrency level: median, min and max over the rounds that had a successful session.</summary>
public sealed record LoadSideFigures(
    BenchFigure AggregateTokensPerSecond,
    BenchFigure DecodeTokensPerSecond,
    BenchFigure TtftP50Ms,
    BenchFigure TtftP95Ms,
    BenchFigure ItlP50Ms,
    BenchFigure ItlP95Ms,
    IReadOnlyList<LoadRoundFigures> Rounds)
{
    public static LoadSideFigures Of(IReadOnlyList<LoadRoundFigures> rounds)
    {
        var measured = rounds.Where(r => r.Sessions > r.Errors).ToArray();
        BenchFigure Figure(Func<LoadRoundFigures, double> pick)
        {
            var values = measured.Select(pick).Where(double.IsFinite).ToArray();
            return values.Length == 0 ? new BenchFigure(double.NaN, double.NaN, double.NaN) : BenchFigure.Of(values);
        }
        return new LoadSideFigures(Figure(r => r.AggregateTokensPerSecond), Figure(r => r.DecodeTokensPerSecond),
            Figure(r => r.TtftP50Ms), Figure(r => r.TtftP95Ms), Figure(r => r.ItlP50Ms), Figure(r => r.ItlP95Ms), rounds);
    }
}

/// <summary>
/// Potluck and llama.cpp at one concurrency level. Ratios follow `bench pool`: Potluck / llama.cpp, so above 1 is
/// better for tokens/s and below 1 is better for latencies.
/// </summary>
public sealed record LoadLevelResult(int Concurrency, int Sessions, int Errors, IReadOnlyList<string> ErrorSamples, LoadSideFigures Potluck, LoadSideFigures LlamaCpp)
{
    public double AggregateRatio => Potluck.AggregateTokensPerSecond.Median / LlamaCpp.AggregateTokensPerSecond.Median;
    public double DecodeRatio => Potluck.DecodeTokensPerSecond.Median / LlamaCpp.DecodeTokensPerSecond.Median;
    public double TtftP50Ratio => Potluck.TtftP50Ms.Median / LlamaCpp.TtftP50Ms.Median;
    public double TtftP95Ratio => Potluck.TtftP95Ms.Median / LlamaCpp.TtftP95Ms.Median;
    public double ItlP50Ratio => Potluck.ItlP50Ms.Median / LlamaCpp.ItlP50Ms.Median;
    public double ItlP95Ratio => Potluck.ItlP95Ms.Median / LlamaCpp.ItlP95Ms.Median;
}

public sealed record LoadBenchmarkResult(string Model, int PromptTokens, int OutputTokens, int Rounds, int Threads, IReadOnlyList<LoadLevelResult> Levels);

/// <summary>
/// Many users at once: each round starts N streamed greedy completions together (token-id prompts, distinct per
/// session, end of sequence ignored) and times every chunk; right after it llama.cpp decodes the same N prompts as
/// one batch in this process. Failed or stalled sessions are counted, never waited on past the timeouts.
/// </summary>
public static class LoadBenchmark
{
    /// <summary>Output tokens of the unmeasured round before each level (new connections, batch shapes).</summary>
    private const int LevelWarmupTokens = 8;

    public static async Task<LoadBenchmarkResult> RunAsync(LoadBenchmarkOptions options, IProgress<string>? progress, CancellationToken ct)
    {
        options.Validate();
        // Every wait is bounded per session below, so the client itself never times out.
        using var http = new HttpClient { BaseAddress = options.GatewayUrl, Timeout = Timeout.InfiniteTimeSpan };
        if (options.ApiKey is { } key) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        string model;
        using (var listing = new CancellationTokenSource(options.StallTimeout))
        using (var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, listing.Token))
        using (var models = JsonDocument.Parse(await http.GetStringAsync("v1/models", linked.Token)))
            model = models.RootElement.GetProperty("data")[0].GetProperty("id").GetString()!;

        var threads = options.Threads > 0 ? options.Threads : Environment.ProcessorCount;
        using var reference = new LlamaCppBatchReference(options.ModelPath, threads);
        var largest = options.Concurrency.Max();
        var prompts = Enumerable.Range(0, largest).Select(s => PromptTokens(options.PromptTokens, s)).ToArray();

        // Warm-up as in `bench pool`: one session at a time until every pool process has run its hot path a while.
        for (var warmed = 0; warmed < options.WarmupTokens;)
        {
            progress?.Report($"warm-up: {warmed}/{options.WarmupTokens} tokens");
            var tokens = Math.Clamp(options.WarmupTokens - warmed, 2, Math.Max(options.OutputTokens, 128));
            var session = await SessionAsync(http, model, prompts[0], tokens, Stopwatch.GetTimestamp(), options, ct);
            if (session.Error is { } error) throw new InvalidOperationException($"the warm-up request failed: {error}");
            warmed += tokens;
        }

        var levels = new List<LoadLevelResult>();
        foreach (var concurrency in options.Concurrency)
        {
            var levelPrompts = prompts[..concurrency];
            progress?.Report($"{concurrency} session(s): warm-up round");
            var warmupTokens = Math.Min(LevelWarmupTokens, options.OutputTokens);
            await PotluckRoundAsync(http, model, levelPrompts, warmupTokens, options, ct);
            reference.Run(levelPrompts, warmupTokens);

            // Potluck and llama.cpp rounds alternate, so load from elsewhere on the machine hits both alike.
            var potluck = new List<LoadRoundFigures>();
            var llamaCpp = new List<LoadRoundFigures>();
            var errors = new List<string>();
            for (var round = 1; round <= options.Rounds; round++)
            {
                progress?.Report($"{concurrency} session(s): Potluck round {round}/{options.Rounds}");
                var (figures, roundErrors) = await PotluckRoundAsync(http, model, levelPrompts, options.OutputTokens, options, ct);
                potluck.Add(figures);
                errors.AddRange(roundErrors);
                ct.ThrowIfCancellationRequested();
                progress?.Report($"{concurrency} session(s): llama.cpp round {round}/{options.Rounds}");
                llamaCpp.Add(ReferenceFigures(reference.Run(levelPrompts, options.OutputTokens)));
            }
            levels.Add(new LoadLevelResult(concurrency, concurrency * options.Rounds, errors.Count, errors.Distinct().Take(5).ToArray(),
                LoadSideFigures.Of(potluck), LoadSideFigures.Of(llamaCpp)));
        }
        return new LoadBenchmarkResult(model, options.PromptTokens, options.OutputTokens, options.Rounds, threads, levels);
    }

    /// <summary>
    /// A fixed prompt of byte-range token ids (valid in every vocabulary the generator writes), the same for every
    /// session but for tokens 1 and 2, which carry the session number, so no two sessions share more than the first token.
    /// </summary>
    internal static int[] PromptTokens(int count, int session)
    {
        var tokens = new int[count];
        var random = new Random(17);
        tokens[0] = 1;
        for (var i = 1; i < count; i++) tokens[i] = 3 + 32 + random.Next(95);
        if (count > 1) tokens[1] = 3 + 32 + session % 95;
        if (count > 2) tokens[2] = 3 + 32 + session / 95 % 95;
        return tokens;
    }

    private static LoadRoundFigures ReferenceFigures(BatchedRun run)
    {
        var steps = run.StepMs.Order().ToArray();
        var outputTokens = run.Sequences * run.TokensPerSequence;
        return new LoadRoundFigures(run.Sequences, 0, outputTokens, run.TotalMs,
            outputTokens / (run.TotalMs / 1000),
            run.Sequences * (run.TokensPerSequence - 1) / ((run.TotalMs - run.PrefillMs) / 1000),
            run.PrefillMs, run.PrefillMs, Percentile(steps, 0.50), Percentile(steps, 0.95));
    }

    /// <summary>Starts every session at the same moment and waits for all; failures become error strings.</summary>
    private static async Task<(LoadRoundFigures Figures, IReadOnlyList<string> Errors)> PotluckRoundAsync(HttpClient http, string model,
        int[][] prompts, int tokens, LoadBenchmarkOptions options, CancellationToken ct)
    {
        var started = Stopwatch.GetTimestamp();
        var sessions = await Task.WhenAll(prompts.Select(prompt => SessionAsync(http, model, prompt, tokens, started, options, ct)));
        var ok = sessions.Where(s => s.Error is null).ToArray();
        var errors = sessions.Where(s => s.Error is not null).Select(s => s.Error!).ToArray();
        if (ok.Length == 0)
            return (new LoadRoundFigures(sessions.Length, errors.Length, 0, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN), errors);
        var wallMs = ok.Max(s => s.LastMs);
        var outputTokens = ok.Sum(s => s.Tokens);
        var meanDecodeMs = ok.Average(s => s.LastMs - s.FirstMs);
        var ttft = ok.Select(s => s.FirstMs).Order().ToArray();
        var gaps = ok.SelectMany(s => s.GapsMs).Order().ToArray();
        return (new LoadRoundFigures(sessions.Length, errors.Length, outputTokens, wallMs,
            outputTokens / (wallMs / 1000),
            ok.Sum(s => s.Tokens - 1) / (meanDecodeMs / 1000),
            Percentile(ttft, 0.50), Percentile(ttft, 0.95), Percentile(gaps, 0.50), Percentile(gaps, 0.95)), errors);
    }

    /// <summary>One streamed session; times are milliseconds from the round's start.</summary>
    private sealed record SessionResult(string? Error, int Tokens = 0, double FirstMs = 0, double LastMs = 0, double[]? Gaps = null)
    {
        public double[] GapsMs => Gaps ?? [];
    }

    private static async Task<SessionResult> SessionAsync(HttpClient http, string model, int[] prompt, int tokens, long roundStart,
        LoadBenchmarkOptions options, CancellationToken ct)
    {
        var body = JsonSerializer.Serialize(new
        {
            model, prompt, max_tokens = tokens, temperature = 0, ignore_eos = true, stream = true,
            stream_options = new { include_usage = true },
        });
        var deadline = Stopwatch.GetTimestamp() + (long)(options.SessionTimeout.TotalSeconds * Stopwatch.Frequency);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        // Re-armed at every chunk: the next wait may take the stall timeout, never past the session's deadline.
        void Arm() => timeout.CancelAfter(TimeSpan.FromTicks(Math.Max(1, Math.Min(options.StallTimeout.Ticks,
            (long)((deadline - Stopwatch.GetTimestamp()) * (double)TimeSpan.TicksPerSecond / Stopwatch.Frequency)))));
        var stage = "waiting for the response";
        try
        {
            Arm();
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
            if (!response.IsSuccessStatusCode)
            {
                var text = await response.Content.ReadAsStringAsync(timeout.Token);
                return new SessionResult($"HTTP {(int)response.StatusCode}: {Shorten(text)}");
            }
            stage = "streaming";
            long first = 0, last = 0, end = 0;
            var generated = -1;
            var gaps = new List<double>(tokens);
            await using var stream = await response.Content.ReadAsStreamAsync(timeout.Token);
            await foreach (var item in SseParser.Create(stream).EnumerateAsync(timeout.Token))
            {
                var now = Stopwatch.GetTimestamp();
                Arm();
                if (item.Data == "[DONE]") break;
                using var chunk = JsonDocument.Parse(item.Data);
                var root = chunk.RootElement;
                if (root.TryGetProperty("error", out var error))
                    return new SessionResult($"stream error: {Shorten(error.TryGetProperty("message", out var m) ? m.GetString() ?? "" : error.GetRawText())}");
                if (root.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
                {
                    generated = usage.GetProperty("completion_tokens").GetInt32();
                    continue;
                }
                if (!root.TryGetProperty("choices", out var choices) || choices.GetArrayLength() == 0) continue;
                var choice = choices[0];
                // The finish chunk follows the last token at once; it ends the decode but is no gap between tokens.
                if (choice.TryGetProperty("finish_reason", out var finish) && finish.ValueKind == JsonValueKind.String)
                {
                    end = now;
                    continue;
                }
                if (first == 0) first = now;
                // Chunks with no text (a character's first bytes, held back) are not tokens arriving on screen.
                if (!choice.TryGetProperty("text", out var piece) || piece.GetString() is not { Length: > 0 }) continue;
                if (last != 0) gaps.Add(Stopwatch.GetElapsedTime(last, now).TotalMilliseconds);
                last = now;
            }
            if (first == 0) return new SessionResult("the stream ended before the first token");
            if (generated < 0) generated = gaps.Count + 1;
            if (generated < tokens) return new SessionResult($"streamed {generated} of {tokens} tokens");
            if (end == 0) end = last;
            return new SessionResult(null, generated, Stopwatch.GetElapsedTime(roundStart, first).TotalMilliseconds,
                Stopwatch.GetElapsedTime(roundStart, end).TotalMilliseconds, gaps.ToArray());
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return new SessionResult($"timed out {stage} (stall limit {options.StallTimeout.TotalSeconds:0.#} s, session limit {options.SessionTimeout.TotalSeconds:0.#} s)");
        }
        catch (Exception e) when (e is HttpRequestException or IOException or JsonException or InvalidOperationException or FormatException)
        {
            return new SessionResult($"{stage}: {Shorten(e.Message)}");
        }
    }

    private static string Shorten(string text)
    {
        text = text.ReplaceLineEndings(" ").Trim();
        return text.Length <= 200 ? text : text[..200] + "…";
    }

    /// <summary>Linear interpolation between the closest ranks of <paramref name="sorted"/> (NaN when empty).</summary>
    internal static double Percentile(IReadOnlyList<double> sorted, double fraction)
    {
        if (sorted.Count == 0) return double.NaN;
        var rank = fraction * (sorted.Count - 1);
        var low = (int)Math.Floor(rank);
        var high = Math.Min(low + 1, sorted.Count - 1);
        return sorted[low] + (sorted[high] - sorted[low]) * (rank - low);
    }
}
