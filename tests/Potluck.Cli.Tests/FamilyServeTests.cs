using System.Text;
using System.Text.Json;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;
using Potluck.Reference;
using Xunit.Abstractions;

namespace Potluck.Cli.Tests;

/// <summary>
/// Each model family through real processes: `potluck serve --model FILE --nodes 3` on a generated file of the
/// family gives, over the HTTP API, exactly llama.cpp's greedy tokens on the same file (with the bit-exact F32
/// wire: the default F16 wire rounds hidden states between stages).
/// </summary>
[ProcessTest]
public sealed class FamilyServeTests(ITestOutputHelper output) : IClassFixture<TempHome>
{
    private const int Tokens = 24;
    private static readonly TimeSpan ReadyLimit = TimeSpan.FromSeconds(120);
    private static readonly int[] Prompt = [1, 3 + 'O', 3 + 'n', 3 + 'c', 3 + 'e', 3 + ' ', 3 + 'u', 3 + 'p', 3 + 'o', 3 + 'n'];

    /// <summary>The families served end to end (the oracle tests cover every family and type in-process).</summary>
    public static TheoryData<string> Families() => new("qwen3moe", "gemma3", "deepseek2", "gpt-oss");

    [Theory]
    [MemberData(nameof(Families))]
    public async Task ServeGivesLlamaCppsGreedyTokensOverHttp(string architecture)
    {
        var path = TestModels.Get(Spec(architecture), GgmlType.Q8_0);
        var expected = Reference(path);
        Assert.True(expected.Distinct().Count() > 3, $"reference output is degenerate: {string.Join(",", expected)}");

        using var home = new TempHome();
        await using var serve = await ServeProcess.StartAsync(home.Path, ["--model", path, "--nodes", "3"], ReadyLimit, output,
            new Dictionary<string, string> { ["Potluck__Gateway__WireType"] = "F32" }); // F16 rows change low bits
        using var http = new HttpClient { BaseAddress = serve.Url, Timeout = TimeSpan.FromSeconds(120) };
        using var models = JsonDocument.Parse(await http.GetStringAsync("v1/models"));
        var model = models.RootElement.GetProperty("data")[0].GetProperty("id").GetString();
        var body = JsonSerializer.Serialize(new { model, prompt = Prompt, max_tokens = Tokens, temperature = 0, ignore_eos = true });
        using var response = await http.PostAsync("v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, text);
        using var json = JsonDocument.Parse(text);
        var id = json.RootElement.GetProperty("id").GetString();
        // The session record holds the exact token ids the gateway sampled, and the route it took.
        using var session = JsonDocument.Parse(await http.GetStringAsync($"api/sessions/{id}"));
        var tokens = session.RootElement.GetProperty("generated_tokens").EnumerateArray().Select(e => e.GetInt32()).ToList();
        Assert.Equal(3, session.RootElement.GetProperty("route").GetArrayLength());
        Assert.Equal(expected, tokens);
    }

    /// <summary>The family's small example, or (where that one's greedy text collapses to a repeated token) the oracle's size.</summary>
    private static TestModelSpec Spec(string architecture) => architecture switch
    {
        "qwen3moe" => TestModelSpec.ForArchitecture(architecture) with
        {
            EmbeddingLength = 256, HeadCount = 8, HeadDim = 64, KvHeadCount = 2, FeedForwardLength = 512,
            ExpertCount = 8, ExpertUsedCount = 2, ExpertFeedForwardLength = 256, Seed = 7,
        },
        _ => TestModelSpec.ForArchitecture(architecture),
    };

    private static List<int> Reference(string path)
    {
        using var reference = new LlamaCppReference(path, contextSize: 256, threads: 2);
        var logits = new float[reference.VocabSize];
        reference.Evaluate(Prompt, logits);
        var tokens = new List<int>();
        for (var i = 0; i < Tokens; i++)
        {
            var next = LlamaCppReference.ArgMax(logits);
            tokens.Add(next);
            reference.Evaluate([next], logits);
        }
        return tokens;
    }
}
