using Potluck.Gateway.Api;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Chat;

/// <summary>Turns a chat request with tools into prompt tokens, keeping client text out of special-token parsing.</summary>
public static class ChatPrompt
{
    /// <summary>The tools the prompt shows: none with tool_choice none (the model is not to call any).</summary>
    public static IReadOnlyList<ToolDefinition> PromptTools(CompletionRequest request) =>
        request.ToolChoice.Mode == ToolChoiceMode.None ? [] : request.Tools;

    /// <summary>Whether the model's output is parsed for tool calls.</summary>
    public static bool ParsesTools(CompletionRequest request) => request.Tools.Count > 0 && request.ToolChoice.Mode != ToolChoiceMode.None;

    public static int[] Encode(Tokenizer tokenizer, CompletionRequest request)
    {
        var traits = ChatTemplateTraits.For(tokenizer.ChatTemplate);
        var options = new ChatRenderOptions { EosText = TokenText(tokenizer, tokenizer.EosToken) ?? "</s>" };
        RenderedChat rendered;
        try
        {
            rendered = ChatRenderer.Render(traits, request.Messages, PromptTools(request), options);
        }
        catch (ChatRenderException e)
        {
            throw new ApiErrorException(ApiError.BadRequest(e.Message, e.Param, "invalid_value"));
        }
        if (rendered.PlainMessages is { } plain)
            return tokenizer.EncodeChat(plain, addAssistantPrompt: true, addBos: tokenizer.AddBosByDefault);
        var tokens = new List<int>();
        var first = true;
        foreach (var (text, isContent) in rendered.Parts)
        {
            tokens.AddRange(tokenizer.Encode(text, addBos: first && tokenizer.AddBosByDefault, parseSpecial: !isContent));
            first = false;
        }
        return tokens.ToArray();
    }

    private static string? TokenText(Tokenizer tokenizer, int? token)
    {
        if (token is not { } id) return null;
        var text = tokenizer.CreateStreamingDecoder(renderSpecialTokens: true).Add(id);
        return text.Length > 0 ? text : null;
    }
}
