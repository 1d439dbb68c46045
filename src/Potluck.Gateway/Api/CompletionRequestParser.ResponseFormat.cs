using System.Text.Json;
using Potluck.Gateway.Grammar;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Api;

public static partial class CompletionRequestParser
{
    public const int MaxSchemaNameLength = 64;

    /// <summary>
    /// response_format: "text" (free), "json_object" (any JSON object) or "json_schema" (a value valid under the
    /// schema), each as a grammar for llama.cpp's sampler; null for free text. The schema is converted here, while
    /// the request document is alive, so a schema the converter cannot express is a 400 before any work starts.
    /// </summary>
    internal static GrammarSpec? ParseResponseFormat(JsonElement root)
    {
        if (!root.TryGetProperty("response_format", out var format) || format.ValueKind == JsonValueKind.Null) return null;
        if (format.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType("response_format", "an object"));
        if (!format.TryGetProperty("type", out var typeElement) || typeElement.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing("response_format.type"));
        if (typeElement.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType("response_format.type", "a string"));
        var type = Text(typeElement, "response_format.type");
        switch (type)
        {
            case "text":
                return null;
            case "json_object":
                return new GrammarSpec(JsonSchemaGrammar.JsonObjectGbnf);
            case "json_schema":
                return ParseJsonSchemaFormat(format);
            default:
                throw Error(ApiError.BadRequest(
                    $"Invalid value for 'response_format.type': '{JsonSchemaGrammar.Short(type)}' is not supported; use 'text', 'json_object' or 'json_schema'.",
                    "response_format.type", "unsupported_value"));
        }
    }

    private static GrammarSpec ParseJsonSchemaFormat(JsonElement format)
    {
        const string at = "response_format.json_schema";
        if (!format.TryGetProperty("json_schema", out var spec) || spec.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing(at));
        if (spec.ValueKind != JsonValueKind.Object) throw Error(ApiError.WrongType(at, "an object"));
        if (!spec.TryGetProperty("name", out var nameElement) || nameElement.ValueKind == JsonValueKind.Null) throw Error(ApiError.Missing($"{at}.name"));
        if (nameElement.ValueKind != JsonValueKind.String) throw Error(ApiError.WrongType($"{at}.name", "a string"));
        var name = Text(nameElement, $"{at}.name");
        // OpenAI's rule for the name.
        if (name.Length is 0 or > MaxSchemaNameLength || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-'))
            throw Error(ApiError.OutOfRange($"{at}.name", $"1 to {MaxSchemaNameLength} characters of a-z, A-Z, 0-9, '_' and '-'"));
        if (spec.TryGetProperty("description", out var description) && description.ValueKind is not (JsonValueKind.String or JsonValueKind.Null))
            throw Error(ApiError.WrongType($"{at}.description", "a string"));
        if (spec.TryGetProperty("strict", out var strict) && strict.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
            throw Error(ApiError.WrongType($"{at}.strict", "a boolean"));
        // Without a schema OpenAI accepts any JSON; so does the grammar (any value, not only an object).
        if (!spec.TryGetProperty("schema", out var schema) || schema.ValueKind == JsonValueKind.Null)
            return new GrammarSpec(JsonSchemaGrammar.JsonObjectGbnf);
        if (schema.ValueKind is not (JsonValueKind.Object or JsonValueKind.True))
            throw Error(ApiError.WrongType($"{at}.schema", "a JSON Schema object"));
        try
        {
            return new GrammarSpec(JsonSchemaGrammar.ToRootGbnf(schema));
        }
        catch (JsonSchemaGrammarException e)
        {
            throw Error(ApiError.BadRequest($"Invalid schema for response_format '{name}': {e.Message}.", $"{at}.schema", "invalid_json_schema"));
        }
    }
}
