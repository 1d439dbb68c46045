using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit.Abstractions;
using Potluck.Cli.Chat;
using Potluck.Cli.Commands;
using Potluck.Inference.Text;
using Potluck.Inference.Training;

namespace Potluck.Cli.Tests;

/// <summary>
/// The trained demo model `potluck serve` runs by default answers in English, the untrained model it was trained from
/// does not, and no streamed text carries control characters. English is measured against Debian's `wamerican` word list.
/// </summary>
[ProcessTest]
public sealed partial class DemoModelTests : IClassFixture<TempHome>
{
    private const string Question = "Tell me a fortune.";
    private const double EnglishThreshold = 0.6;
    private const string WordList = "/usr/share/dict/american-english";
    private static readonly TimeSpan ReadyLimit = TimeSpan.FromSeconds(180);
    private static readonly TimeSpan ChatLimit = TimeSpan.FromSeconds(120);
    private readonly TempHome _home;
    private readonly ITestOutputHelper _output;

    public DemoModelTests(TempHome home, ITestOutputHelper output)
    {
        _home = home;
        _output = output;
    }

    private static string TrainedModel => Path.Combine(RepositoryLayout.Root, "models", DemoModels.TrainedFileName);

    [Fact]
    public async Task TheDefaultServeModelAnswersAFortuneInEnglish()
    {
        await using var serve = await ServeProcess.StartAsync(_home.Path, ["--nodes", "2"], ReadyLimit);
        var replies = await AskAsync(serve.Url);
        var (ratio, words) = EnglishRatio(string.Join('\n', replies));
        _output.WriteLine($"trained: {ratio:P1} of {words} words are English\n{string.Join("\n---\n", replies)}");
        Assert.True(words >= 20, $"only {words} words in the replies:\n{string.Join("\n---\n", replies)}");
        Assert.True(ratio >= EnglishThreshold, $"{ratio:P0} of {words} words are English:\n{string.Join("\n---\n", replies)}");
        await AssertStreamsHaveNoControlCharactersAsync(serve.Url);
    }

    [Fact]
    public async Task TheUntrainedInitialModelFailsTheSameCheck()
    {
        var initial = _home.File("potluck-demo-initial.gguf");
        DemoModelFile.WriteInitialFrom(TrainedModel, initial);
        await using var serve = await ServeProcess.StartAsync(_home.Path, ["--model", initial, "--nodes", "2"], ReadyLimit);
        var replies = await AskAsync(serve.Url);
        var (ratio, words) = EnglishRatio(string.Join('\n', replies));
        _output.WriteLine($"untrained: {ratio:P1} of {words} words are English\n{string.Join("\n---\n", replies)}");
        Assert.True(ratio < EnglishThreshold, $"{ratio:P0} of {words} words are English even untrained:\n{string.Join("\n---\n", replies)}");
        await AssertStreamsHaveNoControlCharactersAsync(serve.Url);
    }

    /// <summary>The question through `potluck chat` as a user pipes it: its default (seed 1) and two more seeds.</summary>
    private async Task<List<string>> AskAsync(Uri url)
    {
        var replies = new List<string>();
        foreach (var seed in new string[][] { [], ["--seed", "2"], ["--seed", "3"] })
        {
            var run = await PotluckProcess.RunWithInputAsync(_home.Path, ChatLimit, Question + "\n",
                ["chat", "--url", url.ToString(), "--max-tokens", "120", .. seed]);
            Assert.True(run.ExitCode == 0, run.ToString());
            Assert.DoesNotContain(run.Stdout, ControlCharacters.IsUnsafe);
            replies.Add(run.Stdout.Trim());
        }
        return replies;
    }

    /// <summary>Raw SSE text of several sampled replies (the gateway's defaults, no client filter) holds no control characters.</summary>
    private static async Task AssertStreamsHaveNoControlCharactersAsync(Uri url)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(120) };
        var model = await new ChatClient(http, url).FirstModelAsync(CancellationToken.None);
        for (var seed = 10; seed < 14; seed++)
        {
            var body = JsonSerializer.Serialize(new
            {
                model, stream = true, max_tokens = 100, seed, temperature = 1.5,
                messages = new[] { new { role = "user", content = Question } },
            });
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(url, "v1/chat/completions"))
            {
                Content = new StringContent(body, Encoding.UTF8, "application/json"),
            };
            request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync());
            await using var stream = await response.Content.ReadAsStreamAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(120));
            var text = new StringBuilder();
            await foreach (var data in ServerSentEvents.ReadDataAsync(stream, timeout.Token))
            {
                if (data == "[DONE]") break;
                var (content, _) = ChatClient.ParseChunk(data);
                text.Append(content);
            }
            var shown = text.ToString();
            Assert.True(!shown.Any(ControlCharacters.IsUnsafe), $"seed {seed} streamed a control character: {JsonSerializer.Serialize(shown)}");
        }
    }

    private static readonly Lazy<HashSet<string>> Dictionary = new(() =>
    {
        Assert.True(File.Exists(WordList), $"{WordList} is missing: install Debian's `wamerican` package");
        return new HashSet<string>(File.ReadLines(WordList), StringComparer.Ordinal);
    });

    /// <summary>The share of words (letter runs, inner apostrophes kept) found in the word list as written or in lower case.</summary>
    internal static (double Ratio, int Words) EnglishRatio(string text)
    {
        var words = WordPattern().Matches(text).Select(m => m.Value).ToList();
        if (words.Count == 0) return (0, 0);
        var english = words.Count(w => Dictionary.Value.Contains(w) || Dictionary.Value.Contains(w.ToLowerInvariant()));
        return ((double)english / words.Count, words.Count);
    }

    [GeneratedRegex(@"[A-Za-z]+(?:'[A-Za-z]+)*")]
    private static partial Regex WordPattern();
}
