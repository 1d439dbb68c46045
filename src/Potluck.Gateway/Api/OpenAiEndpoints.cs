using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Potluck.Gateway.Admission;
using Potluck.Gateway.Streaming;
using Potluck.Gateway.Head;
using Potluck.Gateway.Telemetry;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Api;

/// <summary>The OpenAI-compatible API: chat completions, completions and the model list.</summary>
public static class OpenAiEndpoints
{
    public static void Map(WebApplication app)
    {
        app.MapPost("/v1/chat/completions", context => HandleAsync(context, CompletionKind.Chat));
        app.MapPost("/v1/completions", context => HandleAsync(context, CompletionKind.Text));
        app.MapGet("/v1/models", WriteModelsAsync);
        app.MapGet("/v1/models/{**id}", WriteModelAsync);
    }

    private static async Task WriteModelsAsync(HttpContext context)
    {
        var model = context.RequestServices.GetRequiredService<ModelFrontEnd>();
        context.Response.ContentType = "application/json";
        await using var json = new Utf8JsonWriter(context.Response.BodyWriter);
        json.WriteStartObject();
        json.WriteString("object", "list");
        json.WriteStartArray("data");
        WriteModel(json, model);
        json.WriteEndArray();
        json.WriteEndObject();
        await json.FlushAsync(context.RequestAborted);
    }

    private static async Task WriteModelAsync(HttpContext context)
    {
        var model = context.RequestServices.GetRequiredService<ModelFrontEnd>();
        var id = context.Request.RouteValues["id"] as string;
        if (id != model.Name)
        {
            await UnknownModel(id ?? "", model).WriteAsync(context);
            return;
        }
        context.Response.ContentType = "application/json";
        await using var json = new Utf8JsonWriter(context.Response.BodyWriter);
        WriteModel(json, model);
        await json.FlushAsync(context.RequestAborted);
    }

    private static void WriteModel(Utf8JsonWriter json, ModelFrontEnd model)
    {
        json.WriteStartObject();
        json.WriteString("id", model.Name);
        json.WriteString("object", "model");
        json.WriteNumber("created", model.Created);
        json.WriteString("owned_by", "potluck");
        json.WriteNumber("context_length", model.ContextLength);
        json.WriteString("architecture", model.Info.Architecture);
        json.WriteNumber("layers", model.LayerCount);
        json.WriteEndObject();
    }

    private static ApiError UnknownModel(string requested, ModelFrontEnd model) =>
        new(404, $"The model '{requested}' does not exist; this gateway serves '{model.Name}'.", ApiError.InvalidRequest, "model", "model_not_found");

    private static async Task HandleAsync(HttpContext context, CompletionKind kind)
    {
        var services = context.RequestServices;
        var telemetry = services.GetRequiredService<GatewayTelemetry>();
        var endpoint = kind == CompletionKind.Chat ? "chat.completions" : "completions";
        var outcome = "error";
        try
        {
            outcome = await RunAsync(context, kind, services);
        }
        catch (ApiErrorException e)
        {
            outcome = e.Error.Status.ToString(System.Globalization.CultureInfo.InvariantCulture);
            await e.Error.WriteAsync(context);
        }
        // Pool and grammar failures before the answer started (a stream's later ones are error events).
        catch (Exception e) when (!context.Response.HasStarted && GenerationFailures.ToApiError(e, GrammarSource) is { } error)
        {
            outcome = error.Status.ToString(System.Globalization.CultureInfo.InvariantCulture);
            await error.WriteAsync(context);
        }
        finally
        {
            telemetry.Requests.Add(1, new KeyValuePair<string, object?>("endpoint", endpoint), new KeyValuePair<string, object?>("outcome", outcome));
        }
    }

    private static async Task<string> RunAsync(HttpContext context, CompletionKind kind, IServiceProvider services)
    {
        var options = services.GetRequiredService<GatewayOptions>();
        var model = services.GetRequiredService<ModelFrontEnd>();
        var body = await ReadBodyAsync(context, options.MaxBodyBytes);
        var request = CompletionRequestParser.Parse(body, kind);
        if (request.Model != model.Name) throw new ApiErrorException(UnknownModel(request.Model, model));
        CompletionRequestParser.CheckLogitBias(request, model.VocabSize);

        var prompt = await PromptTokenizer.TokenizeAsync(request, model, options, context.RequestAborted);
        var context_ = model.ContextLength;
        var maxTokens = request.MaxTokens ?? (context_ - prompt.Length);
        if (prompt.Length >= context_ || (long)prompt.Length + maxTokens > context_)
        {
            var what = kind == CompletionKind.Chat ? "messages" : "prompt";
            throw new ApiErrorException(ApiError.BadRequest(
                $"This model's maximum context length is {context_} tokens. However, you requested {(long)prompt.Length + Math.Max(maxTokens, 0)} tokens " +
                $"({prompt.Length} in the {what}, {Math.Max(maxTokens, 0)} in the completion). Please reduce the length of the {what} or completion.",
                request.MaxTokens is null ? what : "max_tokens", "context_length_exceeded"));
        }

        var endpoint = kind == CompletionKind.Chat ? "chat.completions" : "completions";
        var sampling = Sampling(request, context_);
        // Tool calls made valid by a grammar (forced with required/named, lazy on the call marker with auto).
        if (sampling.Grammar is null && kind == CompletionKind.Chat && Chat.ToolGrammar.For(request, Chat.ChatTemplateTraits.For(model.Tokenizer.ChatTemplate)) is { } toolGrammar)
            sampling = sampling with { Grammar = toolGrammar };
        // The family's markers may be control tokens: the chat output parser then reads them as text.
        var renderSpecial = Chat.ChatOutput.For(request, model.Tokenizer)?.RendersSpecialTokens ?? false;
        var prefix = kind == CompletionKind.Chat ? "chatcmpl-" : "cmpl-";
        var sessionIds = new string[request.N];
        for (var i = 0; i < sessionIds.Length; i++) sessionIds[i] = prefix + Guid.NewGuid().ToString("N");
        var id = sessionIds[0];
        var service = services.GetRequiredService<GenerationService>();
        var caller = AdmissionCaller.Of(context);
        void SessionHeaders()
        {
            context.Response.Headers["x-potluck-session"] = id;
            if (request.N > 1) context.Response.Headers["x-potluck-sessions"] = string.Join(',', sessionIds);
        }
        // A stream that starts early while queued knows its session ids but not yet its route.
        Func<CancellationToken, Task>? keepAlive = !request.Stream ? null : ct =>
        {
            if (!context.Response.HasStarted) SessionHeaders();
            return CompletionResponses.WriteQueuedCommentAsync(context, ct);
        };
        var pieces = TokenPieces.For(model.Tokenizer);
        using var activity = GatewayTelemetry.Source.StartActivity("potluck.gateway.generate");
        activity?.SetTag("potluck.session", id);
        activity?.SetTag("potluck.prompt_tokens", prompt.Length);
        activity?.SetTag("potluck.max_tokens", maxTokens);

        // n choices run one after another, each its own session (choice i: seed + i), so a request
        // holds one admission slot at a time and n = 1 takes the same path. They do not share the prompt's KV yet.
        CompletionResponses? responses = null;
        var completed = new List<CompletedChoice>(request.N);
        var completionTokens = 0;
        for (var index = 0; index < request.N; index++)
        {
            var generationRequest = new GenerationRequest(endpoint, prompt, maxTokens, sampling with { Seed = ChoiceSeed(sampling.Seed, index) },
                request.Stop, request.User, request.IgnoreEos, request.Logprobs ? request.TopLogprobs : null) { RenderSpecialTokens = renderSpecial };
            var sessionId = sessionIds[index];
            GenerationRun generation;
            CancellationTokenSource cancel;
            try
            {
                // A stream that waits for a slot starts early and gets keep-alive comments while it waits.
                (generation, cancel) = await service.StartAsync(generationRequest, sessionId, caller, context.RequestAborted, keepAlive);
            }
            // Turned away after the stream started (waiting, or between choices): the rejection is the stream's error event.
            catch (PoolAtCapacityException e) when (request.Stream && context.Response.HasStarted)
            {
                var error = GenerationFailures.ToApiError(e, GrammarSource)!;
                responses ??= new CompletionResponses(context, kind, id, model.Name, DateTimeOffset.UtcNow.ToUnixTimeSeconds(), request.IncludeUsage);
                await responses.WriteStreamErrorAsync(error, context.RequestAborted);
                return error.Status.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
            using (cancel)
            await using (generation)
            {
                var ct = cancel.Token;
                try
                {
                    await generation.PrepareAsync(ct);
                }
                // A stream that already started (a later choice, or early while queued): the failure is an error event.
                catch (Exception e) when (request.Stream && context.Response.HasStarted && GenerationFailures.ToApiError(e, GrammarSource) is { } error)
                {
                    responses ??= new CompletionResponses(context, kind, id, model.Name, DateTimeOffset.UtcNow.ToUnixTimeSeconds(), request.IncludeUsage);
                    await responses.WriteStreamErrorAsync(error, ct);
                    return error.Status.ToString(System.Globalization.CultureInfo.InvariantCulture);
                }
                if (responses is null)
                {
                    activity?.SetTag("potluck.route", generation.Route?.ToString());
                    // Which nodes serve this session, for operators and tests (a failover may change it later); a
                    // stream that started early while queued has sent its headers already, without the route.
                    if (!context.Response.HasStarted)
                    {
                        SessionHeaders();
                        if (generation.Route is { } route) context.Response.Headers["x-potluck-route"] = route.HeaderValue;
                    }
                    responses = new CompletionResponses(context, kind, id, model.Name, DateTimeOffset.UtcNow.ToUnixTimeSeconds(), request.IncludeUsage);
                    if (request.Stream && !context.Response.HasStarted) await responses.StartStreamAsync();
                }
                if (request.Stream)
                {
                    if (await StreamChoiceAsync(generation, responses, pieces, request, model, index, services, ct) is { } failed) return failed;
                }
                else
                {
                    completed.Add(await CollectChoiceAsync(generation, pieces, request, model, ct));
                }
                completionTokens += generation.CompletionTokens;
            }
        }
        activity?.SetTag("potluck.completion_tokens", completionTokens);
        var ctEnd = context.RequestAborted;
        // Usage counts the prompt once (what the client sent) and the completion tokens of every choice.
        if (!request.Stream)
        {
            await responses!.WriteCompleteAsync(completed, prompt.Length, completionTokens, ctEnd);
            return "200";
        }
        if (request.IncludeUsage) await responses!.WriteUsageChunkAsync(prompt.Length, completionTokens, ctEnd);
        await responses!.WriteDoneAsync(ctEnd);
        return "200";
    }

    /// <summary>Runs one choice to its end for a non-streamed answer.</summary>
    private static async Task<CompletedChoice> CollectChoiceAsync(GenerationRun generation, TokenPieces pieces, CompletionRequest request,
        ModelFrontEnd model, CancellationToken ct)
    {
        var chat = Chat.ChatOutput.For(request, model.Tokenizer);
        var text = new StringBuilder();
        await foreach (var piece in generation.RunAsync(ct))
        {
            if (chat is null) text.Append(piece);
            else chat.Push(piece);
        }
        var logprobs = new LogprobsSlice(generation.Logprobs, pieces, 0, generation.LogprobsCovered);
        if (chat is null) return new CompletedChoice(text.ToString(), FinishName(generation.Finish), logprobs);
        chat.Finish();
        return new CompletedChoice(chat.Content, chat.FinishReason(FinishName(generation.Finish)), logprobs, chat.Calls, chat.Reasoning);
    }

    /// <summary>Streams one choice: its role chunk (chat), text chunks with their tokens' logprobs, and its finish chunk.</summary>
    /// <returns>Null, or the outcome ("503", "400") when the stream ended with an error event.</returns>
    private static async Task<string?> StreamChoiceAsync(GenerationRun generation, CompletionResponses responses, TokenPieces pieces,
        CompletionRequest request, ModelFrontEnd model, int index, IServiceProvider services, CancellationToken ct)
    {
        // Tools and reasoning: the family's parser turns the text into content, reasoning and tool-call chunks.
        var chat = Chat.ChatOutput.For(request, model.Tokenizer);
        if (request.Kind == CompletionKind.Chat) await responses.WriteRoleChunkAsync(index, ct);
        var sent = 0;
        try
        {
            await foreach (var piece in generation.RunAsync(ct))
            {
                var covered = generation.LogprobsCovered;
                var slice = new LogprobsSlice(generation.Logprobs, pieces, sent, covered);
                if (chat is null)
                {
                    await responses.WriteTextChunkAsync(index, piece, slice, ct);
                    sent = covered;
                }
                else if (await chat.WriteAsync(responses, index, chat.Push(piece), slice, ct))
                {
                    sent = covered;
                }
            }
            if (chat is not null && await chat.WriteAsync(responses, index, chat.Finish(), new LogprobsSlice(generation.Logprobs, pieces, sent, generation.LogprobsCovered), ct))
                sent = generation.LogprobsCovered;
        }
        catch (Exception e) when (GenerationFailures.ToApiError(e, GrammarSource) is { } error)
        {
            services.GetRequiredService<ILoggerFactory>().CreateLogger("Potluck.Gateway").LogWarning("Session {Session} failed mid-stream: {Error}", generation.SessionId, e.Message);
            await responses.WriteStreamErrorAsync(error, ct);
            return error.Status.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }
        // Tokens with no text of their own (the start of a character) whose logprobs the last piece did not carry.
        if (generation.LogprobsCovered > sent)
            await responses.WriteTextChunkAsync(index, "", new LogprobsSlice(generation.Logprobs, pieces, sent, generation.LogprobsCovered), ct);
        var finish = FinishName(generation.Finish);
        await responses.WriteFinishChunkAsync(index, chat?.FinishReason(finish) ?? finish, ct);
        return null;
    }

    /// <summary>Choice <paramref name="index"/>'s seed: the request's seed + index, so each choice equals an n = 1 request with that seed.</summary>
    internal static uint ChoiceSeed(uint seed, int index)
    {
        var choice = unchecked(seed + (uint)index);
        return choice == uint.MaxValue ? uint.MaxValue - 1 : choice;
    }

    // Where a request's grammar comes from, for its error message.
    private const string GrammarSource = "response_format or the tools";

    private static string FinishName(FinishReason? reason) => reason == FinishReason.Length ? "length" : "stop";

    internal static SamplingOptions Sampling(CompletionRequest request, int contextLength)
    {
        var seed = request.Seed is { } s ? unchecked((uint)s) : (uint)Random.Shared.NextInt64(0, uint.MaxValue);
        // llama.cpp reads seed 0xFFFFFFFF as "pick a random seed", which would break same-seed-same-text.
        if (seed == uint.MaxValue) seed = uint.MaxValue - 1;
        var greedy = request.Temperature == 0f || request.TopP == 0f;
        return new SamplingOptions
        {
            Temperature = greedy ? 0f : request.Temperature,
            TopK = greedy ? 0 : request.TopK,
            TopP = greedy ? 1f : request.TopP,
            MinP = greedy ? 0f : request.MinP,
            RepeatPenalty = 1f,
            PresencePenalty = request.PresencePenalty,
            FrequencyPenalty = request.FrequencyPenalty,
            // OpenAI's penalties look at everything generated so far.
            PenaltyLastN = contextLength,
            Seed = seed,
            Grammar = request.Grammar,
            LogitBias = request.LogitBias,
        };
    }

    /// <summary>
    /// Reads the whole body up to <paramref name="limit"/> bytes; larger bodies are 413. An oversized body is still
    /// drained (Kestrel caps it at <see cref="GatewayHost.DrainLimit"/>), so the client reads a clean 413 instead of a reset.
    /// </summary>
    internal static async Task<byte[]> ReadBodyAsync(HttpContext context, long limit)
    {
        var reader = context.Request.BodyReader;
        var tooLarge = context.Request.ContentLength is { } declared && declared > limit;
        while (true)
        {
            ReadResult read;
            try
            {
                read = await reader.ReadAsync(context.RequestAborted);
            }
            catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
            {
                throw new ApiErrorException(TooLarge(limit));
            }
            var buffer = read.Buffer;
            if (tooLarge || buffer.Length > limit)
            {
                tooLarge = true;
                reader.AdvanceTo(buffer.End);
                if (read.IsCompleted) throw new ApiErrorException(TooLarge(limit));
                continue;
            }
            if (read.IsCompleted)
            {
                var bytes = buffer.ToArray();
                reader.AdvanceTo(buffer.End);
                return bytes;
            }
            reader.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    private static ApiError TooLarge(long limit) =>
        new(413, $"The request body exceeds the gateway's limit of {limit} bytes.", ApiError.InvalidRequest, null, "request_too_large");
}
