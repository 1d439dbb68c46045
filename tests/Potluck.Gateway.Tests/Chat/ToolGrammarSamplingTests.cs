using System.Text;
using System.Text.Json;
using Potluck.Gateway.Api;
using Potluck.Gateway.Chat;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Tests.Chat;

/// <summary>
/// Each family's forced tool-call grammar through llama.cpp's grammar sampler on random logits (the test model's
/// byte vocabulary spells every marker): whatever the logits, the output is one call the family's parser reads,
/// with arguments valid under the tool's schema.
/// </summary>
public sealed class ToolGrammarSamplingTests : IDisposable
{
    private readonly Tokenizer _tokenizer = Tokenizer.Load(TestModels.Small());

    public void Dispose() => _tokenizer.Dispose();

    private static CompletionRequest Request(string choice, bool parallel) => CompletionRequestParser.Parse(Encoding.UTF8.GetBytes(
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"parallel_tool_calls\":" + (parallel ? "true" : "false") + ",\"tool_choice\":" + choice + "," +
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"enum\":[\"Paris\",\"Rome\"]},\"days\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":7}},\"required\":[\"city\",\"days\"],\"additionalProperties\":false}}}," +
        "{\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"parameters\":{\"type\":\"object\",\"properties\":{\"utc\":{\"type\":\"boolean\"}},\"required\":[\"utc\"],\"additionalProperties\":false}}}]}"),
        CompletionKind.Chat);

    [Theory]
    [InlineData("Qwen-Qwen3-0.6B.jinja")]
    [InlineData("meta-llama-Llama-3.2-3B-Instruct.jinja")]
    [InlineData("mistralai-Mistral-Nemo-Instruct-2407.jinja")]
    [InlineData("openai-gpt-oss-120b.jinja")]
    [InlineData("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja")]
    [InlineData(null)]
    public void ForcedCallsAreValidWhateverTheLogits(string? template)
    {
        var traits = ChatTemplateTraits.Detect(template is null ? null : ChatRendererTests.Template(template));
        foreach (var (choice, parallel) in new[] { ("\"required\"", true), ("\"required\"", false), ("{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}", false) })
        {
            var request = Request(choice, parallel);
            var grammar = ToolGrammar.For(request, traits)!;
            for (var seed = 1; seed <= 4; seed++)
            {
                using var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = grammar }, _tokenizer);
                var random = new Random(seed);
                var tokens = new List<int>();
                var logits = new float[_tokenizer.VocabSize];
                var ended = false;
                for (var i = 0; i < 400 && !ended; i++)
                {
                    for (var k = 0; k < logits.Length; k++) logits[k] = (float)(random.NextDouble() * 8 - 4);
                    var token = sampler.SampleAndAccept(logits);
                    ended = _tokenizer.IsEndOfGeneration(token);
                    if (!ended) tokens.Add(token);
                }
                var text = _tokenizer.Decode(tokens.ToArray());
                Assert.True(ended, $"{traits.Family} {choice}: no end after 400 tokens: {text}");
                var parser = new ChatOutputParser(traits, parseTools: true, parallel);
                var events = new List<ChatOutputEvent>();
                parser.Push(text, events);
                parser.Finish(events);
                Assert.True(parser.Calls.Count >= 1, $"{traits.Family} {choice}: no call in {text}");
                if (!parallel) Assert.Single(parser.Calls);
                Assert.DoesNotContain(events, e => e.Kind == ChatOutputKind.Content && e.Text.Trim().Length > 0);
                foreach (var call in parser.Calls)
                {
                    using var arguments = JsonDocument.Parse(call.ArgumentsJson);
                    var root = arguments.RootElement;
                    if (choice.Contains("get_time", StringComparison.Ordinal)) Assert.Equal("get_time", call.Name);
                    if (call.Name == "get_time")
                    {
                        Assert.True(root.GetProperty("utc").ValueKind is JsonValueKind.True or JsonValueKind.False);
                        Assert.Single(root.EnumerateObject());
                    }
                    else
                    {
                        Assert.Equal("get_weather", call.Name);
                        Assert.Contains(root.GetProperty("city").GetString(), new[] { "Paris", "Rome" });
                        Assert.InRange(root.GetProperty("days").GetInt32(), 1, 7);
                        Assert.Equal(2, root.EnumerateObject().Count());
                    }
                }
            }
        }
    }

    [Theory]
    [InlineData("Qwen-Qwen3-0.6B.jinja", "Let me see. <tool_call>")]
    [InlineData("mistralai-Mistral-Nemo-Instruct-2407.jinja", "Ok [TOOL_CALLS]")]
    [InlineData("openai-gpt-oss-120b.jinja", "<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>commentary to=functions.")]
    [InlineData(null, " {")]
    public void AutoGrammarIsFreeUntilTheCallMarkerThenForcesACall(string? template, string lead)
    {
        var traits = ChatTemplateTraits.Detect(template is null ? null : ChatRendererTests.Template(template));
        var grammar = ToolGrammar.For(Request("\"auto\"", parallel: false), traits)!;
        Assert.True(grammar.IsLazy);
        var script = _tokenizer.Encode(lead, addBos: false, parseSpecial: false);
        for (var seed = 1; seed <= 3; seed++)
        {
            using var sampler = new Sampler(SamplingOptions.Greedy with { Grammar = grammar }, _tokenizer);
            var random = new Random(seed);
            var tokens = new List<int>();
            var logits = new float[_tokenizer.VocabSize];
            var ended = false;
            for (var i = 0; i < 400 && !ended; i++)
            {
                for (var k = 0; k < logits.Length; k++) logits[k] = (float)(random.NextDouble() * 8 - 4);
                // The model "chooses" the lead text (free text, then the marker); the grammar takes over from the marker.
                if (i < script.Length) logits[script[i]] = 100f;
                var token = sampler.SampleAndAccept(logits);
                if (i < script.Length) Assert.Equal(script[i], token);
                ended = _tokenizer.IsEndOfGeneration(token);
                if (!ended) tokens.Add(token);
            }
            var text = _tokenizer.Decode(tokens.ToArray());
            Assert.True(ended, $"{traits.Family}: no end after 400 tokens: {text}");
            var parser = new ChatOutputParser(traits, parseTools: true, parallel: false);
            var events = new List<ChatOutputEvent>();
            parser.Push(text, events);
            parser.Finish(events);
            var call = Assert.Single(parser.Calls);
            using var arguments = JsonDocument.Parse(call.ArgumentsJson);
            Assert.Contains(call.Name, new[] { "get_weather", "get_time" });
        }
    }
}
