using System.Security.Cryptography;

namespace Potluck.Gateway.Chat;

/// <summary>A function the client offers the model: its name, description and JSON Schema of the arguments.</summary>
/// <param name="ParametersJson">The schema as JSON text (an object); "{}" when the client sent none.</param>
/// <param name="ToolJson">The whole tool object as the client sent it (templates that print it verbatim need it).</param>
public sealed record ToolDefinition(string Name, string? Description, string ParametersJson, string ToolJson);

/// <summary>A call the model made (or made earlier, in an assistant message): arguments are JSON text of an object.</summary>
public sealed record ToolCall(string Id, string Name, string ArgumentsJson);

public enum ToolChoiceMode
{
    Auto,
    None,
    Required,
    Named,
}

/// <summary>OpenAI's tool_choice: auto, none, required, or one named function.</summary>
public sealed record ToolChoice(ToolChoiceMode Mode, string? Name = null)
{
    public static readonly ToolChoice Auto = new(ToolChoiceMode.Auto);
    public static readonly ToolChoice None = new(ToolChoiceMode.None);
}

/// <summary>Tool call ids: OpenAI style "call_" + 24 characters; Mistral's templates insist on 9 alphanumerics.</summary>
public static class ToolCallIds
{
    private const string Alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

    public static string New(ChatFamily family) => family == ChatFamily.Mistral ? Random(9) : "call_" + Random(24);

    private static string Random(int length) => RandomNumberGenerator.GetString(Alphabet, length);
}
