using System.Globalization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Potluck.Gateway.Admission;
using Potluck.Gateway.Head;
using Potluck.Gateway.Streaming;
using Potluck.Gateway.Telemetry;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Api.Anthropic;

/// <summary>
/// Anthropic's Messages API, POST /v1/messages, streamed and not, over the same generation machinery as the
/// OpenAI endpoints: the request becomes the same chat request, so the same conversation gives the same tokens.
/// Under the same API-key policy and rate limits (the gateway's fallback policy covers every endpoint);
/// the anthropic-version and anthropic-beta headers are accepted and not needed.
/// </summary>
public static partial class AnthropicEndpoints
{
    public static void Map(WebApplication app)
    {
        app.MapPost(AnthropicErrors.Path, HandleAsync);
        app.MapPost(AnthropicErrors.Path + "/count_tokens", CountTokensAsync);
    }

    /// <summary>/v1/messages/count_tokens: the prompt tokens the same request would take, tools and prefill included.</summary>
    private static async Task CountTokensAsync(HttpContext context)
    {
        var services = context.RequestServices;
        try
        {
            var options = services.GetRequiredService<GatewayOptions>();
            var model = services.GetRequiredService<ModelFrontEnd>();
            var request = MessagesRequestParser.Parse(await OpenAiEndpoints.ReadBodyAsync(context, options.MaxBodyBytes), countOnly: true);
            if (request.Chat.Model != model.Name) throw new ApiErrorException(UnknownModel(request.Chat.Model, model));
            var prompt = await TokenizeAsync(request, model, options, context.RequestAborted);
            context.Response.ContentType = "application/json";
            await using var json = new System.Text.Json.Utf8JsonWriter(context.Response.BodyWriter);
            json.WriteStartObject();
            json.WriteNumber("input_tokens", prompt.Length);
            json.WriteEndObject();
            await json.FlushAsync(context.RequestAborted);
        }
        catch (ApiErrorException e)
        {
            await e.Error.WriteAsync(context);
        }
    }

    private static ApiError UnknownModel(string requested, ModelFrontEnd model) =>
        new(404, $"model: the model '{requested}' does not exist; this gateway serves '{model.Name}'.", ApiError.InvalidRequest, "model", "model_not_found");

    private static async Task HandleAsync(HttpContext context)
    {
        var telemetry = context.RequestServices.GetRequiredService<GatewayTelemetry>();
        var outcome = "error";
        try
        {
            outcome = await RunAsync(context, context.RequestServices);
        }
        catch (ApiErrorException e)
        {
            outcome = e.Error.Status.ToString(CultureInfo.InvariantCulture);
            await e.Error.WriteAsync(context);
        }
        // Pool and grammar failures before the answer started (a stream's later ones are error events).
        catch (Exception e) when (!context.Response.HasStarted && GenerationFailures.ToApiError(e, GrammarSource) is { } error)
        {
            outcome = error.Status.ToString(CultureInfo.InvariantCulture);
            await error.WriteAsync(context);
        }
        finally
        {
            telemetry.Requests.Add(1, new KeyValuePair<string, object?>("endpoint", "messages"), new KeyValuePair<string, object?>("outcome", outcome));
        }
    }

    private static async Task<string> RunAsync(HttpContext context, IServiceProvider services)
    {
        var options = services.GetRequiredService<GatewayOptions>();
        var model = services.GetRequiredService<ModelFrontEnd>();
        var body = await OpenAiEndpoints.ReadBodyAsync(context, options.MaxBodyBytes);
        var request = MessagesRequestParser.Parse(body);
        var chat = request.Chat;
        if (chat.Model != model.Name) throw new ApiErrorException(UnknownModel(chat.Model, model));

        var prompt = await TokenizeAsync(request, model, options, context.RequestAborted);
        var contextLength = model.ContextLength;
        var maxTokens = chat.MaxTokens!.Value;
        if ((long)prompt.Length + maxTokens > contextLength)
            throw new ApiErrorException(ApiError.BadRequest(
                $"prompt is too long: {prompt.Length} tokens in the prompt plus max_tokens {maxTokens} > {contextLength}, this model's context length. " +
                "Shorten the messages or lower max_tokens.", "max_tokens", "context_length_exceeded"));

        // Tool calls and reasoning are parsed from the output as for chat completions, with the same grammars.
        var output = Chat.ChatOutput.For(chat, model.Tokenizer);
        var sampling = OpenAiEndpoints.Sampling(chat, contextLength);
        // An output_config.format grammar (chat.Grammar, in sampling already) takes precedence, as response_format does.
        if (sampling.Grammar is null && ToolGrammar(chat, model) is { } toolGrammar) sampling = sampling with { Grammar = toolGrammar };
        var generationRequest = new GenerationRequest("messages", prompt, maxTokens, sampling, chat.Stop, chat.User) { RenderSpecialTokens = output?.RendersSpecialTokens ?? false };
        var id = "msg_" + Guid.NewGuid().ToString("N");
        var service = services.GetRequiredService<GenerationService>();
        using var activity = GatewayTelemetry.Source.StartActivity("potluck.gateway.generate");
        activity?.SetTag("potluck.session", id);
        activity?.SetTag("potluck.prompt_tokens", prompt.Length);
        activity?.SetTag("potluck.max_tokens", maxTokens);

        // Sent before the stream may start early (while queued), so every answer carries them; the route comes later.
        context.Response.Headers["request-id"] = id;
        context.Response.Headers["x-potluck-session"] = id;
        var responses = new MessagesResponses(context, id, model.Name);
        // A stream that waits for a slot starts early and gets keep-alive comments while it waits.
        Func<CancellationToken, Task>? keepAlive = chat.Stream ? ct => CompletionResponses.WriteQueuedCommentAsync(context, ct) : null;
        GenerationRun generation;
        CancellationTokenSource cancel;
        try
        {
            (generation, cancel) = await service.StartAsync(generationRequest, id, AdmissionCaller.Of(context), context.RequestAborted, keepAlive);
        }
        // Turned away after the stream started: the rejection is the stream's error event.
        catch (PoolAtCapacityException e) when (context.Response.HasStarted)
        {
            var error = GenerationFailures.ToApiError(e, GrammarSource)!;
            await responses.WriteStreamErrorAsync(error, context.RequestAborted);
            return error.Status.ToString(CultureInfo.InvariantCulture);
        }
        using (cancel)
        await using (generation)
        {
            var ct = cancel.Token;
            try
            {
                await generation.PrepareAsync(ct);
            }
            // The stream started early while queued: a failure to open the route is an error event.
            catch (Exception e) when (context.Response.HasStarted && GenerationFailures.ToApiError(e, GrammarSource) is { } error)
            {
                await responses.WriteStreamErrorAsync(error, ct);
                return error.Status.ToString(CultureInfo.InvariantCulture);
            }
            activity?.SetTag("potluck.route", generation.Route?.ToString());
            if (!context.Response.HasStarted && generation.Route is { } route) context.Response.Headers["x-potluck-route"] = route.HeaderValue;
            var answer = new AnswerBlocks(output);
            if (chat.Stream) return await StreamAsync(generation, responses, answer, services, ct);

            await foreach (var piece in generation.RunAsync(ct)) answer.Push(piece);
            answer.Finish();
            activity?.SetTag("potluck.completion_tokens", generation.CompletionTokens);
            await responses.WriteCompleteAsync(answer.Blocks, StopReason(generation, answer), generation.StopSequence, generation.PromptTokens, generation.CompletionTokens, ct);
            return "200";
        }
    }

    private static async Task<string> StreamAsync(GenerationRun generation, MessagesResponses responses, AnswerBlocks answer, IServiceProvider services,
        CancellationToken ct)
    {
        if (!responses.HasStarted) await responses.StartStreamAsync();
        await responses.WriteMessageStartAsync(generation.PromptTokens, ct);
        try
        {
            await foreach (var piece in generation.RunAsync(ct)) await answer.WriteAsync(responses, answer.Push(piece), ct);
            await answer.WriteAsync(responses, answer.Finish(), ct);
        }
        catch (Exception e) when (GenerationFailures.ToApiError(e, GrammarSource) is { } error)
        {
            services.GetRequiredService<ILoggerFactory>().CreateLogger("Potluck.Gateway").LogWarning("Session {Session} failed mid-stream: {Error}", generation.SessionId, e.Message);
            await responses.WriteStreamErrorAsync(error, ct);
            return error.Status.ToString(CultureInfo.InvariantCulture);
        }
        await answer.EndAsync(responses, ct);
        await responses.WriteMessageEndAsync(StopReason(generation, answer), generation.StopSequence, generation.PromptTokens, generation.CompletionTokens, ct);
        return "200";
    }

    // Where a request's grammar comes from, for its error message.
    private const string GrammarSource = "output_config.format or the tools";

    /// <summary>The tool-call grammar; a schema it cannot express is a 400 naming the Anthropic field (tools.N.input_schema).</summary>
    private static GrammarSpec? ToolGrammar(CompletionRequest chat, ModelFrontEnd model)
    {
        try
        {
            return Chat.ToolGrammar.For(chat, Chat.ChatTemplateTraits.For(model.Tokenizer.ChatTemplate));
        }
        catch (ApiErrorException e) when (e.Error.Param is { } param && OpenAiToolParam().Match(param) is { Success: true } match)
        {
            var field = $"tools.{match.Groups[1].Value}.input_schema";
            throw new ApiErrorException(e.Error with { Message = field + ": " + e.Error.Message.Replace($"'{param}'", $"'{field}'"), Param = field });
        }
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"^tools\[(\d+)\]\.function\.parameters$")]
    private static partial System.Text.RegularExpressions.Regex OpenAiToolParam();

    /// <summary>max_tokens when cut off (even inside a call), else tool_use when the model called a tool.</summary>
    private static string StopReason(GenerationRun generation, AnswerBlocks answer) => generation.Finish switch
    {
        FinishReason.Length => "max_tokens",
        _ when answer.HasToolUse => "tool_use",
        _ when generation.StopSequence is not null => "stop_sequence",
        _ => "end_turn",
    };

    /// <summary>
    /// The conversation through the chat template (as for /v1/chat/completions), then a prefill as plain text after
    /// the assistant turn's opener, so the answer continues it. Both under the prompt tokenizer's limits.
    /// </summary>
    private static async Task<int[]> TokenizeAsync(MessagesRequest request, ModelFrontEnd model, GatewayOptions options, CancellationToken ct)
    {
        if (request.Prefill is not { } prefill) return await PromptTokenizer.TokenizeAsync(request.Chat, model, options, ct);
        long characters = prefill.Length;
        foreach (var message in request.Chat.Messages) characters += message.Content.Length;
        var cap = PromptTokenizer.MaxCharacters(options, model);
        if (characters > cap)
            throw new ApiErrorException(ApiError.BadRequest(
                $"prompt is too long: the gateway accepts at most {cap} characters of messages before tokenizing; you sent {characters}.",
                "messages", "context_length_exceeded"));
        var conversation = await PromptTokenizer.TokenizeAsync(request.Chat, model, options, ct);
        int[] continued;
        try
        {
            continued = await model.TokenizerSlots.RunAsync(() => model.Tokenizer.Encode(prefill, addBos: false, parseSpecial: false), options.TokenizeTimeout, ct);
        }
        catch (TokenizerBusyException e)
        {
            throw new ApiErrorException(new ApiError(503, e.Message, ApiError.ServerError, null, "tokenizer_busy"));
        }
        catch (TimeoutException)
        {
            throw new ApiErrorException(ApiError.BadRequest(
                $"The messages could not be tokenized within {options.TokenizeTimeout.TotalSeconds:0.###} s; please shorten them.", "messages", "prompt_too_long"));
        }
        return [.. conversation, .. continued];
    }
}
