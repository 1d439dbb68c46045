using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Potluck.Protocol.V1;
using Potluck.Inference.Engine;
using Potluck.Reference;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Tests;

/// <summary>Greedy output over HTTP through three node processes equals llama.cpp running the whole file in one process.</summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class GreedyParityTests(PoolFixture pool)
{
    private const int Tokens = 32;
    private static readonly int[] Prompt = [1, 3 + 'H', 3 + 'e', 3 + 'l', 3 + 'l', 3 + 'o', 3 + ',', 3 + ' ', 3 + 'w', 3 + 'o', 3 + 'r', 3 + 'l', 3 + 'd'];

    private List<int> Reference()
    {
        using var tokenizer = Tokenizer.Load(pool.ModelPath);
        using var reference = new LlamaCppReference(pool.ModelPath, contextSize: 512, threads: 1);
        var logits = new float[reference.VocabSize];
        reference.Evaluate(Prompt, logits);
        var tokens = new List<int>();
        for (var i = 0; i < Tokens; i++)
        {
            var next = LlamaCppReference.ArgMax(logits);
            tokens.Add(next);
            if (tokenizer.IsEndOfGeneration(next)) break;
            reference.Evaluate([next], logits);
        }
        return tokens;
    }

    private async Task<(List<int> Tokens, string Text)> OverHttp(HttpClient http)
    {
        var body = JsonSerializer.Serialize(new { model = pool.ModelName, prompt = Prompt, max_tokens = Tokens, temperature = 0 });
        using var response = await http.PostAsync("v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, text);
        using var json = JsonDocument.Parse(text);
        var id = json.RootElement.GetProperty("id").GetString();
        // The session grain holds the exact token ids the gateway sampled.
        using var session = JsonDocument.Parse(await http.GetStringAsync($"api/sessions/{id}"));
        var tokens = session.RootElement.GetProperty("generated_tokens").EnumerateArray().Select(e => e.GetInt32()).ToList();
        Assert.Equal("finished", session.RootElement.GetProperty("state").GetString());
        Assert.Equal(3, session.RootElement.GetProperty("route").GetArrayLength());
        return (tokens, json.RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!);
    }

    [Fact]
    public async Task F32WireIsTokenForTokenEqualToLlamaCpp()
    {
        var expected = Reference();
        Assert.True(expected.Distinct().Count() > 3, "reference output is degenerate");
        var (tokens, text) = await OverHttp(pool.Http);
        Assert.Equal(expected, tokens);
        using var tokenizer = Tokenizer.Load(pool.ModelPath);
        // The gateway streams text without control characters (ControlCharacters); the tokens above are compared as they are.
        Assert.Equal(ControlCharacters.Strip(tokenizer.Decode(expected.Where(t => !tokenizer.IsEndOfGeneration(t)).ToArray())), text);
    }

    /// <summary>
    /// What the pool computes with an F16 wire, in one process: the engine's spans with every hidden state that
    /// crosses a process boundary rounded to half precision. (llama.cpp itself never rounds there, so on this
    /// small random model, whose top logits sit close together, F16 can pick other tokens than llama.cpp.)
    /// </summary>
    private List<int> F16WireReference(out int agreeWithLlamaCpp)
    {
        using var tokenizer = Tokenizer.Load(pool.ModelPath);
        using var model = GgufModel.Open(pool.ModelPath);
        using var head = new ModelHead(model, 1);
        var spans = new[] { new LayerSpan(model, 0, 1), new LayerSpan(model, 1, 3), new LayerSpan(model, 3, 4) };
        try
        {
            foreach (var span in spans) span.OpenSession("f16", 512);
            var logits = new float[head.VocabSize];
            var tokens = new List<int>();
            var position = 0;
            int[] input = Prompt;
            for (var i = 0; i < Tokens; i++)
            {
                var hidden = new float[input.Length * head.Width];
                head.Embed(input, hidden);
                RoundToHalf(hidden);
                for (var s = 0; s < spans.Length; s++)
                {
                    var last = s == spans.Length - 1;
                    var output = new float[(last ? 1 : input.Length) * head.Width];
                    spans[s].Forward([new SpanSegment("f16", position, input.Length, LastRowOnly: last)], hidden, output);
                    RoundToHalf(output);
                    hidden = output;
                }
                position += input.Length;
                head.Logits(hidden, 1, logits);
                var next = LlamaCppReference.ArgMax(logits);
                tokens.Add(next);
                if (tokenizer.IsEndOfGeneration(next)) break;
                input = [next];
            }
            var llama = Reference();
            agreeWithLlamaCpp = 0;
            while (agreeWithLlamaCpp < Math.Min(llama.Count, tokens.Count) && llama[agreeWithLlamaCpp] == tokens[agreeWithLlamaCpp]) agreeWithLlamaCpp++;
            return tokens;
        }
        finally
        {
            foreach (var span in spans) span.Dispose();
        }
    }

    private static void RoundToHalf(float[] values)
    {
        for (var i = 0; i < values.Length; i++) values[i] = (float)(Half)values[i];
    }

    [Fact]
    public async Task F16WireEqualsTheEngineWithHalfPrecisionHops()
    {
        var expected = F16WireReference(out _);
        await using var gateway = await pool.StartGatewayAsync(pool.Seed, HiddenType.F16);
        using var http = new HttpClient { BaseAddress = gateway.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        await PoolFixture.WaitReadyAsync(http, TimeSpan.FromSeconds(60));
        var (tokens, _) = await OverHttp(http);
        Assert.Equal(expected, tokens);
    }
}
