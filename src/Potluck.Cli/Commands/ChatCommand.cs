using System.CommandLine;
using System.CommandLine.Parsing;
using System.Runtime.InteropServices;
using Potluck.Cli.Chat;

namespace Potluck.Cli.Commands;

/// <summary>`potluck chat`: a streaming terminal chat against any OpenAI-compatible server.</summary>
public static class ChatCommand
{
    public const string DefaultUrl = "http://127.0.0.1:8080";

    public static Command Create()
    {
        var url = new Option<Uri>("--url")
        {
            Description = "Base URL of the gateway (or any OpenAI-compatible server)",
            DefaultValueFactory = _ => new Uri(DefaultUrl),
            CustomParser = ParseUrl,
        };
        var model = new Option<string?>("--model", "-m") { Description = "Model name to request (default: the first one /v1/models lists)" };
        var system = new Option<string?>("--system") { Description = "A system prompt that starts every conversation" };
        var temperature = new Option<float?>("--temperature") { Description = "Sampling temperature (default 0.8 with top-k 40, top-p 0.95 and seed 1; 0 = greedy)" };
        var maxTokens = new Option<int?>("--max-tokens") { Description = "Most tokens per reply" };
        var seed = new Option<int?>("--seed") { Description = "Sampling seed, for reproducible replies (default 1)" };
        var timeout = new Option<int>("--timeout")
        {
            Description = "Seconds to wait for the server to start answering",
            DefaultValueFactory = _ => 60,
        };
        var command = new Command("chat", """
            Streaming terminal chat against a gateway. Type a message and press Enter.
            /reset clears the history, /exit quits. Ctrl+C stops the current reply; at the prompt it exits.
            With input piped in, each line is one message and the replies go to stdout.
            """)
        {
            url, model, system, temperature, maxTokens, seed, timeout,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            var session = new ChatSession(
                parse.GetRequiredValue(url),
                parse.GetValue(model),
                parse.GetValue(system),
                ChatSettings.WithSamplingDefaults(parse.GetValue(temperature), parse.GetValue(maxTokens), parse.GetValue(seed)),
                TimeSpan.FromSeconds(parse.GetValue(timeout)));
            return await session.RunAsync(cancellationToken);
        });
        return CliApplication.AddExamples(command,
            "potluck chat",
            "potluck chat --url http://pool.lan:8080 --temperature 0.7",
            "echo 'Write a haiku about potlucks' | potluck chat --max-tokens 64");
    }

    /// <summary>An absolute http(s) URL ending in '/', or a parse error (exit 2).</summary>
    internal static Uri? ParseUrl(ArgumentResult result)
    {
        var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : DefaultUrl;
        var option = result.Parent is System.CommandLine.Parsing.OptionResult owner ? owner.Option.Name : "--url";
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            result.AddError($"{option} must be an http:// or https:// URL (got '{text}')");
            return null;
        }
        // A trailing slash makes relative paths like v1/models resolve under any path prefix the server has.
        return uri.AbsolutePath.EndsWith('/') ? uri : new Uri(uri + "/");
    }

    private sealed class ChatSession(Uri url, string? model, string? systemPrompt, ChatSettings settings, TimeSpan timeout)
    {
        private readonly List<ChatMessage> _history = [];
        private readonly Lock _replyGate = new();
        private CancellationTokenSource? _reply;

        public async Task<int> RunAsync(CancellationToken cancellationToken)
        {
            var interactive = !Console.IsInputRedirected;
            using var http = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
            var client = new ChatClient(http, url);
            // Ctrl+C while a reply streams stops that reply; anywhere else the default action ends the process.
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnInterrupt);

            using (var connect = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
            {
                connect.CancelAfter(timeout);
                model ??= await ResolveModelAsync(client, connect.Token, cancellationToken);
            }
            ResetHistory();
            if (interactive)
            {
                Console.Error.WriteLine($"Connected to {url} ({model}). /reset clears the history, /exit quits, Ctrl+C stops a reply.");
                Console.Error.WriteLine(settings.Describe());
            }

            while (!cancellationToken.IsCancellationRequested)
            {
                if (interactive) Console.Error.Write("> ");
                var line = await Console.In.ReadLineAsync(cancellationToken);
                if (line is null) break;
                line = line.Trim();
                if (line.Length == 0) continue;
                if (line is "/exit" or "/quit") break;
                if (line == "/reset")
                {
                    ResetHistory();
                    if (interactive) Console.Error.WriteLine("(history cleared)");
                    continue;
                }
                _history.Add(new ChatMessage("user", line));
                var failed = await ReplyAsync(client, interactive, cancellationToken);
                if (failed && !interactive) return ExitCodes.Failure;
            }
            return ExitCodes.Ok;
        }

        private async Task<string> ResolveModelAsync(ChatClient client, CancellationToken withTimeout, CancellationToken userCancel)
        {
            try
            {
                return await client.FirstModelAsync(withTimeout);
            }
            catch (HttpRequestException error)
            {
                throw new CliFailureException($"cannot reach {url}: {error.Message}", error);
            }
            catch (OperationCanceledException) when (!userCancel.IsCancellationRequested)
            {
                throw new CliFailureException($"{url} did not answer within {timeout.TotalSeconds:F0} s");
            }
        }

        /// <summary>Streams one reply to stdout; returns true when it failed.</summary>
        private async Task<bool> ReplyAsync(ChatClient client, bool interactive, CancellationToken cancellationToken)
        {
            var reply = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            lock (_replyGate) _reply = reply;
            var text = new System.Text.StringBuilder();
            string? finishReason = null;
            var failed = false;
            try
            {
                await foreach (var piece in client.StreamAsync(model!, _history, settings, end => finishReason = end.FinishReason, reply.Token))
                {
                    text.Append(piece);
                    Console.Out.Write(piece);
                    await Console.Out.FlushAsync(CancellationToken.None);
                }
                Console.Out.WriteLine();
                if (interactive && finishReason == "length") Console.Error.WriteLine("(reply cut at the token limit)");
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                Console.Out.WriteLine();
                Console.Error.WriteLine("(stopped)");
            }
            catch (Exception error) when (error is HttpRequestException or CliFailureException or System.Text.Json.JsonException or IOException)
            {
                Console.Out.WriteLine();
                Console.Error.WriteLine($"potluck: error: {error.Message}");
                failed = true;
            }
            finally
            {
                lock (_replyGate) _reply = null;
                reply.Dispose();
            }
            // Keep what was shown, even a stopped reply, so the conversation reads the same to both sides.
            if (text.Length > 0) _history.Add(new ChatMessage("assistant", text.ToString()));
            else if (failed) _history.RemoveAt(_history.Count - 1);
            return failed;
        }

        private void ResetHistory()
        {
            _history.Clear();
            if (!string.IsNullOrWhiteSpace(systemPrompt)) _history.Add(new ChatMessage("system", systemPrompt));
        }

        private void OnInterrupt(PosixSignalContext context)
        {
            lock (_replyGate)
            {
                if (_reply is null || _reply.IsCancellationRequested) return;
                _reply.Cancel();
                context.Cancel = true;
            }
        }
    }
}
