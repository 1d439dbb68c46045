using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using Potluck.Gateway.Bench;
using Potluck.Reference;

namespace Potluck.Gateway.Tests;

/// <summary>`bench load`'s measuring: distinct prompts, percentiles, and failed or stalled sessions counted without hanging.</summary>
public sealed class LoadBenchmarkTests
{
    [Fact]
    public void SessionPromptsShareOnlyTheFirstToken()
    {
        var prompts = Enumerable.Range(0, 256).Select(s => LoadBenchmark.PromptTokens(128, s)).ToArray();
        Assert.All(prompts, p => Assert.Equal(1, p[0]));
        Assert.Equal(256, prompts.Select(p => $"{p[1]},{p[2]}").Distinct().Count());
        // The rest is one fixed base prompt, the same in every run.
        Assert.Equal(prompts[0][3..], prompts[255][3..]);
        Assert.Equal(LoadBenchmark.PromptTokens(128, 7), LoadBenchmark.PromptTokens(128, 7));
    }

    [Fact]
    public void PercentilesInterpolateBetweenRanks()
    {
        double[] sorted = [1, 2, 3, 4, 5];
        Assert.Equal(3, LoadBenchmark.Percentile(sorted, 0.5));
        Assert.Equal(4.8, LoadBenchmark.Percentile(sorted, 0.95), 6);
        Assert.Equal(7, LoadBenchmark.Percentile([7], 0.95));
        Assert.True(double.IsNaN(LoadBenchmark.Percentile([], 0.5)));
    }

    [Fact]
    public void BatchedLlamaCppDecodesEachSequenceAsIfAlone()
    {
        // Three 256-token prompts: the prefill is cut at n_batch 512, right after the second prompt's last token.
        var prompts = Enumerable.Range(0, 3).Select(s => LoadBenchmark.PromptTokens(256, s)).ToArray();
        const int tokens = 6;
        var batched = prompts.Select(_ => new int[tokens]).ToArray();
        using (var reference = new LlamaCppBatchReference(TestModels.Small(), threads: 1))
        {
            var run = reference.Run(prompts, tokens, batched);
            Assert.Equal(tokens - 1, run.StepMs.Length);
            Assert.True(run.PrefillMs > 0 && run.TotalMs >= run.PrefillMs + run.StepMs.Sum() - 1e-6);
        }
        using var alone = new LlamaCppReference(TestModels.Small(), contextSize: 256 + tokens + 8, threads: 1);
        var logits = new float[alone.VocabSize];
        for (var s = 0; s < prompts.Length; s++)
        {
            alone.Reset();
            alone.Evaluate(prompts[s], logits);
            var expected = new int[tokens];
            for (var i = 0; i < tokens; i++)
            {
                expected[i] = LlamaCppReference.ArgMax(logits);
                if (i < tokens - 1) alone.Evaluate([expected[i]], logits);
            }
            Assert.Equal(expected, batched[s]);
        }
    }

    [Fact]
    [ProcessTest]
    public async Task FailedAndStalledSessionsAreCountedAndTheRoundEnds()
    {
        // A fake gateway: session 0 streams its tokens, session 1 gets a 503, session 2 opens its stream and then says nothing.
        await using var gateway = FakeGateway.Start();
        var options = new LoadBenchmarkOptions
        {
            GatewayUrl = gateway.Url,
            ModelPath = TestModels.Small(),
            Concurrency = [3],
            PromptTokens = 16,
            OutputTokens = 8,
            Rounds = 1,
            Threads = 1,
            WarmupTokens = 0,
            StallTimeout = TimeSpan.FromSeconds(1),
            SessionTimeout = TimeSpan.FromSeconds(5),
        };
        var clock = Stopwatch.StartNew();
        var result = await LoadBenchmark.RunAsync(options, null, CancellationToken.None);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}");

        var level = Assert.Single(result.Levels);
        Assert.Equal(3, level.Sessions);
        Assert.Equal(2, level.Errors);
        Assert.Contains(level.ErrorSamples, e => e.StartsWith("HTTP 503", StringComparison.Ordinal));
        Assert.Contains(level.ErrorSamples, e => e.StartsWith("timed out streaming", StringComparison.Ordinal));
        // The session that worked is still measured, and llama.cpp ran all three sequences.
        var round = Assert.Single(level.Potluck.Rounds);
        Assert.Equal(8, round.OutputTokens);
        Assert.True(level.Potluck.AggregateTokensPerSecond.Median > 0);
        Assert.Equal(3 * 8, Assert.Single(level.LlamaCpp.Rounds).OutputTokens);
        Assert.True(level.LlamaCpp.ItlP50Ms.Median > 0);
    }

    private sealed class FakeGateway : IAsyncDisposable
    {
        private readonly HttpListener _listener = new();
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _loop;

        public Uri Url { get; }

        private FakeGateway(int port)
        {
            Url = new Uri($"http://127.0.0.1:{port}/");
            _listener.Prefixes.Add(Url.ToString());
            _listener.Start();
            _loop = Task.Run(AcceptAsync);
        }

        public static FakeGateway Start()
        {
            using var probe = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            var port = ((IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            return new FakeGateway(port);
        }

        private async Task AcceptAsync()
        {
            while (!_stop.IsCancellationRequested)
            {
                HttpListenerContext context;
                try { context = await _listener.GetContextAsync(); }
                catch (Exception) when (_stop.IsCancellationRequested) { return; }
                _ = Task.Run(() => AnswerAsync(context));
            }
        }

        private async Task AnswerAsync(HttpListenerContext context)
        {
            var response = context.Response;
            try
            {
                if (context.Request.Url!.AbsolutePath == "/v1/models")
                {
                    await WriteAsync(response, """{"object":"list","data":[{"id":"fake","object":"model"}]}""");
                    response.Close();
                    return;
                }
                using var body = await JsonDocument.ParseAsync(context.Request.InputStream);
                var session = body.RootElement.GetProperty("prompt")[1].GetInt32() - 35;
                var tokens = body.RootElement.GetProperty("max_tokens").GetInt32();
                if (session == 1)
                {
                    response.StatusCode = 503;
                    await WriteAsync(response, """{"error":{"message":"pool busy"}}""");
                    response.Close();
                    return;
                }
                response.ContentType = "text/event-stream";
                response.SendChunked = true;
                if (session == 2)
                {
                    // A comment sends the headers but is no event: the client must give up on the stall.
                    await WriteAsync(response, ": open\n\n");
                    await Task.Delay(Timeout.Infinite, _stop.Token);
                    return;
                }
                for (var i = 0; i < tokens; i++)
                    await WriteAsync(response, """data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}""" + "\n\n");
                await WriteAsync(response, """data: {"choices":[{"index":0,"text":"","finish_reason":"length"}]}""" + "\n\n");
                await WriteAsync(response, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":16,\"completion_tokens\":" + tokens + ",\"total_tokens\":" + (16 + tokens) + "}}\n\n");
                await WriteAsync(response, "data: [DONE]\n\n");
                response.Close();
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                // Stopping: the stalled stream is cut off.
            }
            catch (HttpListenerException)
            {
                // The client gave up on this request first.
            }
        }

        private static async Task WriteAsync(HttpListenerResponse response, string text)
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            await response.OutputStream.WriteAsync(bytes);
            await response.OutputStream.FlushAsync();
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Abort();
            await _loop;
            _stop.Dispose();
        }
    }
}
