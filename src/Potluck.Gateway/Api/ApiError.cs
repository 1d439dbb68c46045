using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Potluck.Gateway.Api;

/// <summary>An OpenAI-shaped error: {"error":{"message","type","param","code"}} with its HTTP status.</summary>
public sealed record ApiError(int Status, string Message, string Type = ApiError.InvalidRequest, string? Param = null, string? Code = null)
{
    public const string InvalidRequest = "invalid_request_error";
    public const string ServerError = "server_error";

    /// <summary>When the client should try again, sent as the Retry-After header (whole seconds, at least 1); null: none (1 s on a 503).</summary>
    public TimeSpan? RetryAfter { get; init; }

    /// <summary><see cref="RetryAfter"/> in the header's whole seconds.</summary>
    public int? RetryAfterSeconds => RetryAfter is { } wait ? Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds)) : null;

    public static ApiError BadRequest(string message, string? param = null, string? code = null) => new(400, message, InvalidRequest, param, code);

    public static ApiError WrongType(string param, string expected) =>
        BadRequest($"Invalid type for '{param}': expected {expected}.", param, "invalid_type");

    public static ApiError OutOfRange(string param, string range) =>
        BadRequest($"Invalid value for '{param}': must be {range}.", param, "invalid_value");

    public static ApiError Missing(string param) => BadRequest($"Missing required parameter: '{param}'.", param, "missing_required_parameter");

    public async Task WriteAsync(HttpContext context)
    {
        if (context.Response.HasStarted) return;
        context.Response.StatusCode = Status;
        context.Response.ContentType = "application/json";
        if (RetryAfterSeconds is { } seconds) context.Response.Headers.RetryAfter = seconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        else if (Status == 503) context.Response.Headers.RetryAfter = "1";
        await using var writer = new Utf8JsonWriter(context.Response.BodyWriter);
        // /v1/messages answers every error, access control's included, in Anthropic's shape.
        if (Anthropic.AnthropicErrors.Applies(context)) Anthropic.AnthropicErrors.Write(writer, this);
        else Write(writer);
        await writer.FlushAsync(context.RequestAborted);
    }

    public void Write(Utf8JsonWriter writer)
    {
        writer.WriteStartObject();
        writer.WriteStartObject("error");
        writer.WriteString("message", Message);
        writer.WriteString("type", Type);
        if (Param is null) writer.WriteNull("param");
        else writer.WriteString("param", Param);
        if (Code is null) writer.WriteNull("code");
        else writer.WriteString("code", Code);
        writer.WriteEndObject();
        writer.WriteEndObject();
    }
}

/// <summary>Thrown by request parsing; carries the error to answer with.</summary>
public sealed class ApiErrorException(ApiError error) : Exception(error.Message)
{
    public ApiError Error { get; } = error;
}
