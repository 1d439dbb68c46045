using System.Net;
using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Potluck.Inference.Text;

namespace Potluck.Cli.Chat;

public sealed record ChatMessage(string Role, string Content);

public sealed record ChatSettings
{
    /// <summary>Temperature when none is given: small models loop under greedy decoding, so the chat samples.</summary>
    public const float DefaultTemperature = 0.8f;
    public const int DefaultTopK = 40;
    public const float DefaultTopP = 0.95f;
    /// <summary>Seed when none is given, so the same conversation gets the same replies.</summary>
    public const int DefaultSeed = 1;

    public float? Temperature { get; init; }
    public int? TopK { get; init; }
    public float? TopP { get; init; }
    public int? MaxTokens { get; init; }
    public int? Seed { get; init; }

    /// <summary>
    /// The chat's settings: seeded sampling (temperature 0.8, top-k 40, top-p 0.95, seed 1, llama.cpp's defaults)
    /// unless the user chose a temperature; temperature 0 is greedy.
    /// </summary>
    public static ChatSettings WithSamplingDefaults(float? temperature, int? maxTokens, int? seed)
    {
        var t = temperature ?? DefaultTemperature;
        return new ChatSettings
        {
            Temperature = t,
            TopK = t > 0 ? DefaultTopK : null,
            TopP = t > 0 ? DefaultTopP : null,
            MaxTokens = maxTokens,
            Seed = seed ?? (t > 0 ? DefaultSeed : null),
        };
    }

    /// <summary>One line saying how replies are chosen.</summary>
    public string Describe() => Temperature is > 0
        ? $"Sampling: temperature {Temperature:0.##}, top-k {TopK}, top-p {TopP:0.##}, seed {Seed} (--temperature 0 for greedy, --seed to vary)."
        : "Greedy decoding (temperature 0).";
}

/// <summary>What one streamed reply ended with, as the server reported it.</summary>
public sealed record ChatReplyEnd(string? FinishReason);

/// <summary>Streams chat completions from any OpenAI-compatible server (/v1/chat/completions with stream=true).</summary>
public sealed class ChatClient(HttpClient http, Uri baseUrl)
{
    public Uri BaseUrl { get; } = baseUrl;

    /// <summary>The first model the server lists at /v1/models.</summary>
    public async Task<string> FirstModelAsync(CancellationToken cancellationToken)
    {
        using var response = await http.GetAsync(new Uri(BaseUrl, "v1/models"), cancellationToken);
        var body = await response.Content.ReadAsStringAsync(cancellationToken);
        if (!response.IsSuccessStatusCode) throw ServerError(response.StatusCode, body);
        using var document = JsonDocument.Parse(body);
        if (document.RootElement.TryGetProperty("data", out var data) && data.ValueKind == JsonValueKind.Array)
            foreach (var model in data.EnumerateArray())
                if (model.TryGetProperty("id", out var id) && id.GetString() is { Length: > 0 } name) return name;
        throw new CliFailureException($"{BaseUrl} lists no models at /v1/models");
    }

    /// <summary>Yields the content pieces of one reply as they arrive; the last item's finish reason is reported through <paramref name="onEnd"/>.</summary>
    public async IAsyncEnumerable<string> StreamAsync(
        string model,
        IReadOnlyList<ChatMessage> messages,
        ChatSettings settings,
        Action<ChatReplyEnd>? onEnd,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(BaseUrl, "v1/chat/completions"))
        {
            Content = new ByteArrayContent(RequestBody(model, messages, settings)),
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
        if (!response.IsSuccessStatusCode)
            throw ServerError(response.StatusCode, await response.Content.ReadAsStringAsync(cancellationToken));

        await using var stream = await response.Content.ReadAsStreamAsync(cancellationToken);
        string? finishReason = null;
        await foreach (var data in ServerSentEvents.ReadDataAsync(stream, cancellationToken))
        {
            if (data == "[DONE]") break;
            var (content, finish) = ParseChunk(data);
            if (finish is not null) finishReason = finish;
            // Any server's text may carry terminal controls; the chat prints none of them.
            if (!string.IsNullOrEmpty(content) && ControlCharacters.Strip(content) is { Length: > 0 } safe) yield return safe;
        }
        onEnd?.Invoke(new ChatReplyEnd(finishReason));
    }

    /// <summary>Reads choices[0].delta.content and finish_reason of one chunk; an error event becomes an exception.</summary>
    public static (string? Content, string? FinishReason) ParseChunk(string json)
    {
        using var document = JsonDocument.Parse(json);
        var root = document.RootElement;
        if (root.TryGetProperty("error", out var error)) throw new CliFailureException($"server error: {ErrorMessage(error)}");
        if (!root.TryGetProperty("choices", out var choices) || choices.ValueKind != JsonValueKind.Array || choices.GetArrayLength() == 0)
            return (null, null);
        var choice = choices[0];
        string? content = null;
        if (choice.TryGetProperty("delta", out var delta) && delta.TryGetProperty("content", out var text) && text.ValueKind == JsonValueKind.String)
            content = text.GetString();
        string? finish = null;
        if (choice.TryGetProperty("finish_reason", out var reason) && reason.ValueKind == JsonValueKind.String)
            finish = reason.GetString();
        return (content, finish);
    }

    private static byte[] RequestBody(string model, IReadOnlyList<ChatMessage> messages, ChatSettings settings)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("model", model);
            json.WriteBoolean("stream", true);
            if (settings.Temperature is { } temperature) json.WriteNumber("temperature", temperature);
            if (settings.TopK is { } topK) json.WriteNumber("top_k", topK);
            if (settings.TopP is { } topP) json.WriteNumber("top_p", topP);
            if (settings.MaxTokens is { } maxTokens) json.WriteNumber("max_tokens", maxTokens);
            if (settings.Seed is { } seed) json.WriteNumber("seed", seed);
            json.WriteStartArray("messages");
            foreach (var message in messages)
            {
                json.WriteStartObject();
                json.WriteString("role", message.Role);
                json.WriteString("content", message.Content);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        return buffer.ToArray();
    }

    private static CliFailureException ServerError(HttpStatusCode status, string body)
    {
        var detail = body.Length > 200 ? body[..200] : body;
        try
        {
            using var document = JsonDocument.Parse(body);
            if (document.RootElement.TryGetProperty("error", out var error)) detail = ErrorMessage(error);
        }
        catch (JsonException)
        {
            // Not JSON (a proxy page, say): show the start of the raw body.
        }
        return new CliFailureException($"server answered {(int)status} {status}: {detail}");
    }

    private static string ErrorMessage(JsonElement error) =>
        error.ValueKind == JsonValueKind.Object && error.TryGetProperty("message", out var message)
            ? message.GetString() ?? error.ToString()
            : error.ToString();
}
