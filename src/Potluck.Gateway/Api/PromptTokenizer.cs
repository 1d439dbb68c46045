using Potluck.Gateway.Head;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Api;

/// <summary>
/// Turns a validated request into prompt token ids, with the limits applied before any work: a character cap
/// (llama.cpp's tokenizer is quadratic on a run of one character), then tokenizing off the request thread under
/// <see cref="GatewayOptions.TokenizeTimeout"/> and the front end's bounded tokenizer slots.
/// </summary>
public static class PromptTokenizer
{
    /// <summary>Characters per context token allowed when <see cref="GatewayOptions.MaxPromptCharacters"/> is unset.</summary>
    public const int DefaultCharactersPerToken = 16;

    public static long MaxCharacters(GatewayOptions options, ModelFrontEnd model) =>
        options.MaxPromptCharacters ?? (long)DefaultCharactersPerToken * model.ContextLength;

    public static async Task<int[]> TokenizeAsync(CompletionRequest request, ModelFrontEnd model, GatewayOptions options, CancellationToken ct)
    {
        var what = request.Kind == CompletionKind.Chat ? "messages" : "prompt";
        if (request.PromptTokens is { } ids)
        {
            foreach (var id in ids)
                if ((uint)id >= (uint)model.VocabSize)
                    throw new ApiErrorException(ApiError.OutOfRange("prompt", $"token ids in [0, {model.VocabSize})"));
            if (ids.Length == 0) throw new ApiErrorException(ApiError.OutOfRange(what, "non-empty once tokenized"));
            return ids;
        }

        long characters = request.PromptText?.Length ?? 0;
        foreach (var message in request.Messages)
        {
            characters += message.Content.Length;
            foreach (var call in message.ToolCalls) characters += call.ArgumentsJson.Length;
        }
        foreach (var tool in request.Tools) characters += tool.ToolJson.Length;
        var cap = MaxCharacters(options, model);
        if (characters > cap)
            throw new ApiErrorException(ApiError.BadRequest(
                $"This model's maximum context length is {model.ContextLength} tokens, and the gateway accepts at most {cap} characters of {what} " +
                $"before tokenizing; you sent {characters}. Please reduce the length of the {what}.", what, "context_length_exceeded"));

        var tokenizer = model.Tokenizer;
        Func<int[]> work;
        if (request.Kind == CompletionKind.Chat && Chat.ChatRenderer.Needed(request.Messages, Chat.ChatPrompt.PromptTools(request)))
        {
            work = () => Chat.ChatPrompt.Encode(tokenizer, request);
        }
        else if (request.Kind == CompletionKind.Chat)
        {
            var messages = new (string Role, string Content)[request.Messages.Count];
            for (var i = 0; i < messages.Length; i++) messages[i] = (request.Messages[i].Role, request.Messages[i].Content);
            work = () => tokenizer.EncodeChat(messages, addAssistantPrompt: true, addBos: tokenizer.AddBosByDefault);
        }
        else
        {
            var text = request.PromptText ?? "";
            work = () => tokenizer.Encode(text, addBos: tokenizer.AddBosByDefault, parseSpecial: false);
        }

        int[] tokens;
        try
        {
            tokens = await model.TokenizerSlots.RunAsync(work, options.TokenizeTimeout, ct);
        }
        catch (ChatTemplateException e)
        {
            throw new ApiErrorException(ApiError.BadRequest($"This model cannot format chat messages: {e.Message}", "messages", "chat_template_unavailable"));
        }
        catch (TokenizerBusyException e)
        {
            throw new ApiErrorException(new ApiError(503, e.Message, ApiError.ServerError, null, "tokenizer_busy"));
        }
        catch (TimeoutException)
        {
            throw new ApiErrorException(ApiError.BadRequest(
                $"The {what} could not be tokenized within {options.TokenizeTimeout.TotalSeconds:0.###} s; please shorten it.", what, "prompt_too_long"));
        }
        if (tokens.Length == 0) throw new ApiErrorException(ApiError.OutOfRange(what, "non-empty once tokenized"));
        return tokens;
    }
}
