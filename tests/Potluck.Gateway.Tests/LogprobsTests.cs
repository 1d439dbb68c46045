using System.ClientModel;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using Potluck.Inference.Text;
using Potluck.Reference;
using Xunit.Abstractions;

namespace Potluck.Gateway.Tests;

/// <summary>
/// logprobs, top_logprobs, logit_bias and n through the shared three-node pool. The oracle is llama.cpp (LLamaSharp)
/// on the same file: its logits at the same positions, log-softmaxed here in double precision.
/// </summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class LogprobsTests(PoolFixture pool, ITestOutputHelper output)
{
    private const double Tolerance = 1e-3;
    private static readonly int[] Prompt = [1, 3 + 'O', 3 + 'n', 3 + 'c', 3 + 'e', 3 + ' ', 3 + 'u', 3 + 'p', 3 + 'o', 3 + 'n'];

    private async Task<JsonElement> PostAsync(string path, string body) => (await PostWithSessionsAsync(path, body)).Root;

    /// <summary>The answer and the session id of each choice (x-potluck-sessions when n > 1).</summary>
    private async Task<(JsonElement Root, string[] Sessions)> PostWithSessionsAsync(string path, string body)
    {
        using var response = await pool.Http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, text);
        using var json = JsonDocument.Parse(text);
        var sessions = response.Headers.TryGetValues("x-potluck-sessions", out var all) ? all.Single().Split(',')
            : [response.Headers.GetValues("x-potluck-session").Single()];
        return (json.RootElement.Clone(), sessions);
    }

    private async Task<List<JsonElement>> StreamAsync(string path, string body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        using var response = await pool.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync());
        var chunks = new List<JsonElement>();
        var done = false;
        await using var stream = await response.Content.ReadAsStreamAsync();
        await foreach (var item in SseParser.Create(stream).EnumerateAsync())
        {
            Assert.False(done, "data after [DONE]");
            if (item.Data == "[DONE]") { done = true; continue; }
            using var chunk = JsonDocument.Parse(item.Data);
            Assert.False(chunk.RootElement.TryGetProperty("error", out _), item.Data);
            chunks.Add(chunk.RootElement.Clone());
        }
        Assert.True(done, "no [DONE]");
        return chunks;
    }

    /// <summary>The token ids the gateway sampled, from the session grain.</summary>
    private async Task<List<int>> SessionTokensAsync(string id)
    {
        using var session = JsonDocument.Parse(await pool.Http.GetStringAsync($"api/sessions/{id}"));
        return session.RootElement.GetProperty("generated_tokens").EnumerateArray().Select(e => e.GetInt32()).ToList();
    }

    /// <summary>llama.cpp's log-softmax over the vocabulary at each generated position (logits + bias).</summary>
    private List<double[]> ReferenceLogSoftmax(int[] prompt, IReadOnlyList<int> tokens, IReadOnlyDictionary<int, double>? bias = null)
    {
        using var reference = new LlamaCppReference(pool.ModelPath, contextSize: 512, threads: 1);
        var logits = new float[reference.VocabSize];
        var result = new List<double[]>();
        reference.Evaluate(prompt, logits);
        for (var i = 0; i < tokens.Count; i++)
        {
            var biased = logits.Select((l, id) => (double)l + (bias is not null && bias.TryGetValue(id, out var b) ? b : 0)).ToArray();
            var max = biased.Max();
            var logZ = max + Math.Log(biased.Sum(v => Math.Exp(v - max)));
            result.Add(biased.Select(v => v - logZ).ToArray());
            if (i + 1 < tokens.Count) reference.Evaluate([tokens[i]], logits);
        }
        return result;
    }

    private static byte[] Bytes(Tokenizer tokenizer, int token)
    {
        var buffer = new byte[256];
        return buffer[..tokenizer.TokenBytes(token, buffer)];
    }

    private static void AssertTopMatches(double[] reference, IReadOnlyList<double> top, int k, string at)
    {
        var expected = reference.OrderByDescending(v => v).Take(k).ToArray();
        Assert.Equal(k, top.Count);
        for (var r = 0; r < k; r++)
            Assert.True(Math.Abs(expected[r] - top[r]) < Tolerance, $"{at} rank {r}: gateway {top[r]}, llama.cpp {expected[r]}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ChatTopLogprobsEqualLlamaCppLogSoftmax(bool stream)
    {
        const int k = 5;
        var body = JsonSerializer.Serialize(new
        {
            model = pool.ModelName, messages = new[] { new { role = "user", content = "Tell me a fortune" } }, max_tokens = 12,
            temperature = 0, logprobs = true, top_logprobs = k, stream,
        });
        string id;
        var entries = new List<JsonElement>();
        if (stream)
        {
            var chunks = await StreamAsync("v1/chat/completions", body);
            id = chunks[0].GetProperty("id").GetString()!;
            foreach (var chunk in chunks)
            {
                var logprobs = chunk.GetProperty("choices")[0].GetProperty("logprobs");
                if (logprobs.ValueKind == JsonValueKind.Object) entries.AddRange(logprobs.GetProperty("content").EnumerateArray());
            }
        }
        else
        {
            var root = await PostAsync("v1/chat/completions", body);
            id = root.GetProperty("id").GetString()!;
            entries.AddRange(root.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("content").EnumerateArray());
        }

        using var tokenizer = Tokenizer.Load(pool.ModelPath);
        var prompt = tokenizer.EncodeChat([("user", "Tell me a fortune")], addAssistantPrompt: true, addBos: tokenizer.AddBosByDefault);
        var tokens = await SessionTokensAsync(id);
        var generated = tokens.Where(t => !tokenizer.IsEndOfGeneration(t)).ToList();
        Assert.True(generated.Count >= 4, $"only {generated.Count} tokens");
        Assert.Equal(generated.Count, entries.Count);
        var reference = ReferenceLogSoftmax(prompt, generated);
        output.WriteLine($"{entries.Count} positions, max |gateway - llama.cpp| = {entries.Select((e, i) => Math.Abs(reference[i][generated[i]] - e.GetProperty("logprob").GetDouble())).Max():E2}");
        for (var i = 0; i < entries.Count; i++)
        {
            var entry = entries[i];
            Assert.Equal(Bytes(tokenizer, generated[i]), entry.GetProperty("bytes").EnumerateArray().Select(b => (byte)b.GetInt32()).ToArray());
            var logprob = entry.GetProperty("logprob").GetDouble();
            Assert.True(Math.Abs(reference[i][generated[i]] - logprob) < Tolerance, $"token {i}: gateway {logprob}, llama.cpp {reference[i][generated[i]]}");
            var top = entry.GetProperty("top_logprobs").EnumerateArray().ToList();
            AssertTopMatches(reference[i], top.Select(t => t.GetProperty("logprob").GetDouble()).ToList(), k, $"token {i}");
            // Greedy: the sampled token is the most likely one.
            Assert.Equal(entry.GetProperty("token").GetString(), top[0].GetProperty("token").GetString());
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task CompletionLogprobsEqualLlamaCppLogSoftmax(bool stream)
    {
        const int k = 3;
        var body = JsonSerializer.Serialize(new { model = pool.ModelName, prompt = Prompt, max_tokens = 12, temperature = 0, logprobs = k, stream });
        string id;
        var text = new StringBuilder();
        var tokenTexts = new List<string>();
        var tokenLogprobs = new List<double>();
        var tops = new List<Dictionary<string, double>>();
        var offsets = new List<int>();
        void Add(JsonElement choice)
        {
            text.Append(choice.GetProperty("text").GetString());
            var logprobs = choice.GetProperty("logprobs");
            if (logprobs.ValueKind != JsonValueKind.Object) return;
            tokenTexts.AddRange(logprobs.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()!));
            tokenLogprobs.AddRange(logprobs.GetProperty("token_logprobs").EnumerateArray().Select(t => t.GetDouble()));
            tops.AddRange(logprobs.GetProperty("top_logprobs").EnumerateArray().Select(o => o.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble())));
            offsets.AddRange(logprobs.GetProperty("text_offset").EnumerateArray().Select(t => t.GetInt32()));
        }
        if (stream)
        {
            var chunks = await StreamAsync("v1/completions", body);
            id = chunks[0].GetProperty("id").GetString()!;
            foreach (var chunk in chunks) Add(chunk.GetProperty("choices")[0]);
        }
        else
        {
            var root = await PostAsync("v1/completions", body);
            id = root.GetProperty("id").GetString()!;
            Add(root.GetProperty("choices")[0]);
        }

        using var tokenizer = Tokenizer.Load(pool.ModelPath);
        var generated = (await SessionTokensAsync(id)).Where(t => !tokenizer.IsEndOfGeneration(t)).ToList();
        Assert.Equal(generated.Count, tokenLogprobs.Count);
        Assert.Equal(generated.Count, tokenTexts.Count);
        Assert.Equal(generated.Count, offsets.Count);
        var reference = ReferenceLogSoftmax(Prompt, generated);
        output.WriteLine($"{generated.Count} positions, max |gateway - llama.cpp| = {generated.Select((t, i) => Math.Abs(reference[i][t] - tokenLogprobs[i])).Max():E2}");
        for (var i = 0; i < generated.Count; i++)
        {
            Assert.True(Math.Abs(reference[i][generated[i]] - tokenLogprobs[i]) < Tolerance, $"token {i}: gateway {tokenLogprobs[i]}, llama.cpp {reference[i][generated[i]]}");
            // Completions' top_logprobs: the top k, keyed by text (the sampled token is among them when greedy).
            var top = tops[i].Values.OrderByDescending(v => v).ToList();
            Assert.InRange(top.Count, 1, k);
            var expected = reference[i].OrderByDescending(v => v).ToArray();
            for (var r = 0; r < top.Count; r++) Assert.True(Math.Abs(expected[r] - top[r]) < 2e-3 || top.Count < k, $"token {i} rank {r}");
            Assert.Equal(tokenLogprobs[i], tops[i][tokenTexts[i]], 5);
            Assert.True(offsets[i] >= (i == 0 ? 0 : offsets[i - 1]) && offsets[i] <= text.Length, $"text_offset {offsets[i]} at {i}");
        }
        Assert.Equal(0, offsets[0]);
    }

    /// <summary>With a stop sequence, only tokens whose text lies wholly before it have logprobs, streamed or not.</summary>
    [Fact]
    public async Task StopSequenceKeepsTheLogprobsOfTheTokensBeforeIt()
    {
        string Body(string stop, bool stream) =>
            $"{{\"model\":{JsonSerializer.Serialize(pool.ModelName)},\"prompt\":{JsonSerializer.Serialize(Prompt)},\"max_tokens\":16,\"temperature\":0," +
            $"\"logprobs\":1,\"stream\":{(stream ? "true" : "false")}{stop}}}";
        var whole = (await PostAsync("v1/completions", Body("", false))).GetProperty("choices")[0];
        var text = whole.GetProperty("text").GetString()!;
        var offsets = whole.GetProperty("logprobs").GetProperty("text_offset").EnumerateArray().Select(e => e.GetInt32()).ToList();
        var logprobs = whole.GetProperty("logprobs").GetProperty("token_logprobs").EnumerateArray().Select(e => e.GetDouble()).ToList();
        // A stop that begins inside the text, at a character some token's text ends before.
        var cut = Enumerable.Range(3, Math.Max(0, text.Length - 5)).FirstOrDefault(c => !char.IsSurrogate(text[c]) && text.IndexOf(text.Substring(c, 2), StringComparison.Ordinal) == c);
        Assert.True(cut > 0, $"no usable stop in '{text}'");
        var stop = text.Substring(cut, 2);
        var expected = Enumerable.Range(0, offsets.Count).Count(i => (i + 1 < offsets.Count ? offsets[i + 1] : text.Length) <= cut);

        var stopped = (await PostAsync("v1/completions", Body($",\"stop\":{JsonSerializer.Serialize(stop)}", false))).GetProperty("choices")[0];
        Assert.Equal(text[..cut], stopped.GetProperty("text").GetString());
        Assert.Equal("stop", stopped.GetProperty("finish_reason").GetString());
        var kept = stopped.GetProperty("logprobs").GetProperty("token_logprobs").EnumerateArray().Select(e => e.GetDouble()).ToList();
        Assert.Equal(logprobs.Take(expected), kept);

        var streamedText = new StringBuilder();
        var streamed = new List<double>();
        foreach (var chunk in await StreamAsync("v1/completions", Body($",\"stop\":{JsonSerializer.Serialize(stop)}", true)))
        {
            var choice = chunk.GetProperty("choices")[0];
            streamedText.Append(choice.GetProperty("text").GetString());
            if (choice.GetProperty("logprobs") is { ValueKind: JsonValueKind.Object } lp)
                streamed.AddRange(lp.GetProperty("token_logprobs").EnumerateArray().Select(e => e.GetDouble()));
        }
        Assert.Equal(text[..cut], streamedText.ToString());
        Assert.Equal(kept, streamed);
    }

    [Fact]
    public async Task LogitBiasBansOrForcesATokenAndLogprobsSeeTheBias()
    {
        async Task<(List<int> Tokens, List<double> Logprobs)> Run(string bias)
        {
            var body = $"{{\"model\":{JsonSerializer.Serialize(pool.ModelName)},\"prompt\":{JsonSerializer.Serialize(Prompt)},\"max_tokens\":8,\"temperature\":0,\"logprobs\":0{bias}}}";
            var root = await PostAsync("v1/completions", body);
            var logprobs = root.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("token_logprobs").EnumerateArray().Select(e => e.GetDouble()).ToList();
            return (await SessionTokensAsync(root.GetProperty("id").GetString()!), logprobs);
        }
        using var tokenizer = Tokenizer.Load(pool.ModelPath);
        var (baseline, _) = await Run("");
        var first = baseline[0];
        Assert.False(tokenizer.IsEndOfGeneration(first));

        var (banned, bannedLogprobs) = await Run($",\"logit_bias\":{{\"{first}\":-100}}");
        Assert.DoesNotContain(first, banned);
        // The logprobs are those of the biased distribution: llama.cpp's logits with the banned token at -infinity.
        var generated = banned.Where(t => !tokenizer.IsEndOfGeneration(t)).ToList();
        var reference = ReferenceLogSoftmax(Prompt, generated, new Dictionary<int, double> { [first] = double.NegativeInfinity });
        for (var i = 0; i < generated.Count; i++)
            Assert.True(Math.Abs(reference[i][generated[i]] - bannedLogprobs[i]) < Tolerance, $"token {i}: {bannedLogprobs[i]} vs {reference[i][generated[i]]}");

        var forced = 3 + 'q';
        Assert.NotEqual(forced, first);
        var (forcedTokens, forcedLogprobs) = await Run($",\"logit_bias\":{{\"{forced}\":100}}");
        Assert.Equal(Enumerable.Repeat(forced, 8), forcedTokens);
        Assert.All(forcedLogprobs, lp => Assert.True(lp > -1e-3, $"forced token logprob {lp}"));
    }

    private string ChoicesBody(int n, long seed, bool stream) => JsonSerializer.Serialize(new
    {
        model = pool.ModelName, messages = new[] { new { role = "user", content = "Sample something" } }, max_tokens = 12,
        temperature = 1.0, seed, n, stream,
    });

    [Fact]
    public async Task NChoicesAreReproducibleFromSeedPlusIndexStreamedAndNot()
    {
        var (root, sessions) = await PostWithSessionsAsync("v1/chat/completions", ChoicesBody(3, 42, stream: false));
        var choices = root.GetProperty("choices").EnumerateArray().ToList();
        Assert.Equal([0, 1, 2], choices.Select(c => c.GetProperty("index").GetInt32()));
        var texts = choices.Select(c => c.GetProperty("message").GetProperty("content").GetString()!).ToList();
        Assert.True(texts.Distinct().Count() > 1, "three seeded choices are all the same: " + string.Join(" | ", texts));

        // Each choice is its own session: usage sums their tokens, and choice i equals an n = 1 request with seed 42 + i.
        Assert.Equal(3, sessions.Distinct().Count());
        Assert.Equal(root.GetProperty("id").GetString(), sessions[0]);
        var perChoice = new int[3];
        for (var i = 0; i < 3; i++) perChoice[i] = (await SessionTokensAsync(sessions[i])).Count;
        Assert.Equal(perChoice.Sum(), root.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        for (var i = 0; i < 3; i++)
        {
            var single = await PostAsync("v1/chat/completions", ChoicesBody(1, 42 + i, stream: false));
            Assert.Equal(texts[i], single.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
        }

        var streamed = new StringBuilder[3];
        var finishes = new string?[3];
        var roles = new int[3];
        for (var i = 0; i < 3; i++) streamed[i] = new StringBuilder();
        var body = ChoicesBody(3, 42, stream: true).Replace("\"stream\":true", "\"stream\":true,\"stream_options\":{\"include_usage\":true}");
        int? usage = null;
        foreach (var chunk in await StreamAsync("v1/chat/completions", body))
        {
            if (chunk.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object) usage = u.GetProperty("completion_tokens").GetInt32();
            foreach (var choice in chunk.GetProperty("choices").EnumerateArray())
            {
                var index = choice.GetProperty("index").GetInt32();
                var delta = choice.GetProperty("delta");
                if (delta.TryGetProperty("role", out _)) roles[index]++;
                if (delta.TryGetProperty("content", out var content)) streamed[index].Append(content.GetString());
                if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finishes[index] = choice.GetProperty("finish_reason").GetString();
            }
        }
        Assert.Equal(texts, streamed.Select(s => s.ToString()));
        Assert.Equal([1, 1, 1], roles);
        Assert.Equal(choices.Select(c => c.GetProperty("finish_reason").GetString()), finishes);
        Assert.Equal(perChoice.Sum(), usage);
    }

    [Fact]
    public async Task OpenAiSdkReadsChatLogprobs()
    {
        var chat = new ChatClient(pool.ModelName, new ApiKeyCredential("unused"),
            new OpenAIClientOptions { Endpoint = new Uri(pool.Gateway.BaseAddress, "v1"), NetworkTimeout = TimeSpan.FromSeconds(60) });
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 8, Temperature = 0f, IncludeLogProbabilities = true, TopLogProbabilityCount = 3 };
        ChatCompletion completion = await chat.CompleteChatAsync([new UserChatMessage("Hello there")], options);
        var tokens = completion.ContentTokenLogProbabilities;
        Assert.NotEmpty(tokens);
        foreach (var token in tokens)
        {
            Assert.InRange(token.LogProbability, -9999f, 0f);
            Assert.Equal(3, token.TopLogProbabilities.Count);
            Assert.Equal(token.TopLogProbabilities[0].LogProbability, token.LogProbability, 5);
            Assert.True(token.TopLogProbabilities[0].LogProbability >= token.TopLogProbabilities[2].LogProbability);
            Assert.NotNull(token.Utf8Bytes);
        }
    }
}
