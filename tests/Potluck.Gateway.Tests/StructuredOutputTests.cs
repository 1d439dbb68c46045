using System.ClientModel;
using System.Text;
using System.Text.Json;
using Json.Schema;
using LLama;
using LLama.Common;
using LLama.Native;
using OpenAI;
using OpenAI.Chat;
using Potluck.Gateway.Grammar;
using Potluck.Inference.Text;
using Potluck.Reference;

namespace Potluck.Gateway.Tests;

/// <summary>
/// response_format through the shared 3-node pool: the random test model's free text is gibberish, yet json_schema
/// output is JSON valid under the schema (JsonSchema.Net 8.0.5), and grammar-constrained tokens equal llama.cpp's
/// on one context with the same grammar and seed.
/// </summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class StructuredOutputTests(PoolFixture pool)
{
    private const string PersonSchema = """
        {"type":"object","properties":{
          "name":{"type":"string","minLength":1,"maxLength":10},
          "age":{"type":"integer","minimum":0,"maximum":120},
          "role":{"enum":["admin","user","guest"]},
          "tags":{"type":"array","items":{"type":"string","pattern":"^[a-z]{1,4}$"},"maxItems":3},
          "ok":{"type":"boolean"}},
         "required":["name","age","role","ok"],"additionalProperties":false}
        """;

    private static readonly int[] Prompt = [1, 3 + 'J', 3 + 'S', 3 + 'O', 3 + 'N', 3 + ':', 3 + ' '];

    private async Task<(JsonDocument Response, string Body)> PostAsync(string path, object body)
    {
        using var response = await pool.Http.PostAsync(path, new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, text);
        return (JsonDocument.Parse(text), text);
    }

    private static object SchemaFormat(string schema) => new
    {
        type = "json_schema",
        json_schema = new { name = "person", strict = true, schema = JsonDocument.Parse(schema).RootElement },
    };

    private static void AssertValid(string schema, string output)
    {
        using var document = JsonDocument.Parse(output);
        var result = JsonSchema.FromText(schema).Evaluate(document.RootElement, new EvaluationOptions { OutputFormat = OutputFormat.List });
        Assert.True(result.IsValid, $"'{output}' does not match the schema");
    }

    [Fact]
    public async Task OpenAiSdkJsonSchemaResponseValidates()
    {
        var chat = new ChatClient(pool.ModelName, new ApiKeyCredential("unused"),
            new OpenAIClientOptions { Endpoint = new Uri(pool.Gateway.BaseAddress, "v1"), NetworkTimeout = TimeSpan.FromSeconds(60) });
        var valid = 0;
        foreach (var seed in new long[] { 1, 2, 3 })
        {
            var options = new ChatCompletionOptions
            {
                MaxOutputTokenCount = 300,
                Temperature = 1f,
#pragma warning disable OPENAI001 // Seed is marked experimental in the SDK
                Seed = seed,
#pragma warning restore OPENAI001
                ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("person", BinaryData.FromString(PersonSchema), jsonSchemaIsStrict: true),
            };
            ChatCompletion completion = await chat.CompleteChatAsync([new UserChatMessage("Describe a person.")], options);
            var text = completion.Content[0].Text;
            if (completion.FinishReason == ChatFinishReason.Length) continue;
            Assert.Equal(ChatFinishReason.Stop, completion.FinishReason);
            AssertValid(PersonSchema, text);
            valid++;
        }
        Assert.True(valid >= 2, $"only {valid} of 3 outputs ended within max_tokens");
    }

    [Fact]
    public async Task StreamedJsonSchemaEqualsNonStreamedAndValidates()
    {
        var body = new Dictionary<string, object>
        {
            ["model"] = pool.ModelName, ["messages"] = new[] { new { role = "user", content = "Go" } },
            ["max_tokens"] = 300, ["temperature"] = 0.8, ["seed"] = 42, ["response_format"] = SchemaFormat(PersonSchema),
        };
        var (whole, _) = await PostAsync("v1/chat/completions", body);
        var expected = whole.RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        Assert.Equal("stop", whole.RootElement.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        AssertValid(PersonSchema, expected);

        body["stream"] = true;
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"),
        };
        using var response = await pool.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.True(response.IsSuccessStatusCode);
        var text = new StringBuilder();
        string? finish = null;
        foreach (var line in (await response.Content.ReadAsStringAsync()).Split('\n'))
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
            using var chunk = JsonDocument.Parse(line[6..]);
            if (!chunk.RootElement.TryGetProperty("choices", out var choices) || choices.GetArrayLength() == 0) continue;
            if (choices[0].GetProperty("delta").TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String) text.Append(content.GetString());
            if (choices[0].TryGetProperty("finish_reason", out var reason) && reason.ValueKind == JsonValueKind.String) finish = reason.GetString();
        }
        Assert.Equal(expected, text.ToString());
        Assert.Equal("stop", finish);
    }

    [Fact]
    public async Task JsonObjectModeGivesAnObject()
    {
        var (response, _) = await PostAsync("v1/chat/completions", new
        {
            model = pool.ModelName, messages = new[] { new { role = "user", content = "Go" } }, max_tokens = 200, temperature = 0,
            response_format = new { type = "json_object" },
        });
        var choice = response.RootElement.GetProperty("choices")[0];
        var text = choice.GetProperty("message").GetProperty("content").GetString()!;
        Assert.StartsWith("{", text);
        if (choice.GetProperty("finish_reason").GetString() == "stop")
        {
            using var parsed = JsonDocument.Parse(text);
            Assert.Equal(JsonValueKind.Object, parsed.RootElement.ValueKind);
        }
    }

    [Fact]
    public async Task MaxTokensCuttingTheGrammarIsLength()
    {
        var (response, _) = await PostAsync("v1/completions", new
        {
            model = pool.ModelName, prompt = Prompt, max_tokens = 4, temperature = 0, response_format = SchemaFormat(PersonSchema),
        });
        var choice = response.RootElement.GetProperty("choices")[0];
        Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        var text = choice.GetProperty("text").GetString()!;
        Assert.StartsWith("{", text);
        Assert.ThrowsAny<JsonException>(() => JsonDocument.Parse(text));
    }

    [Fact]
    public async Task SchemaTheConverterCannotExpressIs400NamingIt()
    {
        using var response = await pool.Http.PostAsync("v1/chat/completions", new StringContent(JsonSerializer.Serialize(new
        {
            model = pool.ModelName, messages = new[] { new { role = "user", content = "Go" } },
            response_format = SchemaFormat("""{"type":"object","properties":{"a":{"allOf":[{"type":"string"}]}}}"""),
        }), Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.Equal(400, (int)response.StatusCode);
        using var error = JsonDocument.Parse(text);
        Assert.Equal("response_format.json_schema.schema", error.RootElement.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains("allOf", text);
        Assert.Contains("#/properties/a/allOf", text);
    }

    [Theory]
    [InlineData(0f, 0u)]
    [InlineData(0.9f, 7u)]
    [InlineData(1.3f, 12345u)]
    public async Task GrammarTokensEqualLlamaCppWithTheSameGrammarAndSeed(float temperature, uint seed)
    {
        const int maxTokens = 160;
        var gbnf = JsonSchemaGrammar.ToRootGbnf(JsonDocument.Parse(PersonSchema).RootElement);
        var expected = Oracle(gbnf, temperature, seed, maxTokens);
        Assert.True(expected.Count >= 12, $"the oracle wrote only {expected.Count} tokens");
        var (response, _) = await PostAsync("v1/completions", new
        {
            model = pool.ModelName, prompt = Prompt, max_tokens = maxTokens, temperature, seed, response_format = SchemaFormat(PersonSchema),
        });
        var id = response.RootElement.GetProperty("id").GetString();
        using var session = JsonDocument.Parse(await pool.Http.GetStringAsync($"api/sessions/{id}"));
        var tokens = session.RootElement.GetProperty("generated_tokens").EnumerateArray().Select(e => e.GetInt32()).ToList();
        Assert.Equal(expected, tokens);
        if (response.RootElement.GetProperty("choices")[0].GetProperty("finish_reason").GetString() == "stop")
            AssertValid(PersonSchema, response.RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!);
    }

    /// <summary>
    /// llama.cpp alone: its logits on one context, its sampler chain (temperature and dist, or greedy, as the gateway
    /// maps these options) and its grammar sampler bound through LLamaSharp, combined as common/sampling.cpp's
    /// common_sampler_sample does: the chain picks, the grammar checks that one token, and on a rejection the
    /// grammar filters the logits and the chain picks again.
    /// </summary>
    private List<int> Oracle(string gbnf, float temperature, uint seed, int maxTokens)
    {
        using var tokenizer = Tokenizer.Load(pool.ModelPath);
        using var reference = new LlamaCppReference(pool.ModelPath, contextSize: 512, threads: 1);
        using var vocab = LLamaWeights.LoadFromFile(new ModelParams(pool.ModelPath) { VocabOnly = true, GpuLayerCount = 0 });
        using var chain = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        if (temperature == 0f) chain.AddGreedySampler();
        else
        {
            chain.AddTemperature(temperature);
            chain.AddDistributionSampler(seed);
        }
        using var grammar = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        grammar.AddGrammar(vocab.NativeHandle, gbnf, "root");

        var logits = new float[reference.VocabSize];
        var candidates = new LLamaTokenData[reference.VocabSize];
        reference.Evaluate(Prompt, logits);
        var tokens = new List<int>();
        for (var step = 0; step < maxTokens; step++)
        {
            var id = Pick(chain, logits, candidates, filter: null);
            var single = new[] { new LLamaTokenData(id, 1f, 0f) };
            using (LLamaTokenDataArrayNative.Create(new LLamaTokenDataArray(single), out var one))
            {
                grammar.Apply(ref one);
                if (float.IsNegativeInfinity(one.Data[0].Logit)) id = Pick(chain, logits, candidates, grammar);
            }
            grammar.Accept(id);
            chain.Accept(id);
            tokens.Add(id);
            if (tokenizer.IsEndOfGeneration(id)) break;
            reference.Evaluate([id], logits);
        }
        return tokens;
    }

    private static int Pick(SafeLLamaSamplerChainHandle chain, float[] logits, LLamaTokenData[] candidates, SafeLLamaSamplerChainHandle? filter)
    {
        for (var i = 0; i < logits.Length; i++) candidates[i] = new LLamaTokenData(i, logits[i], 0f);
        using var pin = LLamaTokenDataArrayNative.Create(new LLamaTokenDataArray(candidates), out var native);
        filter?.Apply(ref native);
        chain.Apply(ref native);
        return (int)native.Data[(int)native.Selected].ID;
    }
}
