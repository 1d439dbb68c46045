using System.Net;
using System.Text;
using System.Text.Json;
using Potluck.Gateway.Head;

namespace Potluck.Gateway.Tests;

/// <summary>
/// Hostile and unsupported values of logit_bias, logprobs, top_logprobs, n and the fields the gateway cannot honour:
/// each is a 400 OpenAI error naming the field (never a 500, never a hang); fields that do not change the output are
/// accepted when well-formed.
/// </summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class HostileApiFieldTests(PoolFixture pool)
{
    private const string Chat = "v1/chat/completions";
    private const string Text = "v1/completions";

    public static TheoryData<string, string, string> Refused()
    {
        var manyKeys = string.Join(",", Enumerable.Range(0, CompletionRequestParserLimits.MaxLogitBiasEntries + 1).Select(i => $"\"{i % 200}{i / 200:D4}\":1"));
        var manyPairs = string.Join(",", Enumerable.Range(0, 17).Select(i => $"\"k{i}\":\"v\""));
        return new TheoryData<string, string, string>
        {
            // logit_bias
            { Chat, "\"logit_bias\":[1,2]", "logit_bias" },
            { Chat, "\"logit_bias\":\"5:10\"", "logit_bias" },
            { Chat, "\"logit_bias\":5", "logit_bias" },
            { Chat, "\"logit_bias\":true", "logit_bias" },
            { Chat, "\"logit_bias\":{\"abc\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"-1\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"1.5\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\" 1\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"+1\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"1e3\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"0x10\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"hello\":-100}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"99999999999\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"2147483648\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"100000\":1}", "logit_bias" },
            { Text, "\"logit_bias\":{\"1000000\":-100}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"5\":101}", "logit_bias.5" },
            { Chat, "\"logit_bias\":{\"5\":-100.5}", "logit_bias.5" },
            { Chat, "\"logit_bias\":{\"5\":\"10\"}", "logit_bias.5" },
            { Chat, "\"logit_bias\":{\"5\":null}", "logit_bias.5" },
            { Chat, "\"logit_bias\":{\"5\":true}", "logit_bias.5" },
            { Chat, "\"logit_bias\":{\"5\":[1]}", "logit_bias.5" },
            { Chat, "\"logit_bias\":{\"5\":{\"bias\":1}}", "logit_bias.5" },
            { Text, "\"logit_bias\":{\"5\":1e400}", "logit_bias.5" },
            { Chat, "\"logit_bias\":{\"5\":1,\"5\":2}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"5\":1,\"05\":2}", "logit_bias" },
            { Chat, "\"logit_bias\":{\"\\ud800\":1}", "logit_bias" },
            { Chat, "\"logit_bias\":{" + manyKeys + "}", "logit_bias" },
            // chat logprobs
            { Chat, "\"logprobs\":\"yes\"", "logprobs" },
            { Chat, "\"logprobs\":1", "logprobs" },
            { Chat, "\"logprobs\":{}", "logprobs" },
            { Chat, "\"logprobs\":true,\"top_logprobs\":21", "top_logprobs" },
            { Chat, "\"logprobs\":true,\"top_logprobs\":-1", "top_logprobs" },
            { Chat, "\"logprobs\":true,\"top_logprobs\":2.5", "top_logprobs" },
            { Chat, "\"logprobs\":true,\"top_logprobs\":\"5\"", "top_logprobs" },
            { Chat, "\"logprobs\":true,\"top_logprobs\":1e9", "top_logprobs" },
            { Chat, "\"top_logprobs\":3", "top_logprobs" },
            { Chat, "\"logprobs\":false,\"top_logprobs\":3", "top_logprobs" },
            // completions logprobs
            { Text, "\"logprobs\":6", "logprobs" },
            { Text, "\"logprobs\":20", "logprobs" },
            { Text, "\"logprobs\":-1", "logprobs" },
            { Text, "\"logprobs\":true", "logprobs" },
            { Text, "\"logprobs\":\"2\"", "logprobs" },
            { Text, "\"logprobs\":1.5", "logprobs" },
            { Text, "\"logprobs\":[2]", "logprobs" },
            { Text, "\"top_logprobs\":2", "top_logprobs" },
            // n
            { Chat, "\"n\":0", "n" },
            { Chat, "\"n\":9", "n" },
            { Chat, "\"n\":-1", "n" },
            { Chat, "\"n\":\"2\"", "n" },
            { Chat, "\"n\":2.5", "n" },
            { Chat, "\"n\":true", "n" },
            { Text, "\"n\":1e308", "n" },
            { Text, "\"n\":128", "n" },
            // fields that would change the output and are not supported
            { Chat, "\"audio\":{\"voice\":\"alloy\",\"format\":\"wav\"}", "audio" },
            { Chat, "\"audio\":\"x\"", "audio" },
            { Chat, "\"modalities\":[\"text\",\"audio\"]", "modalities" },
            { Chat, "\"modalities\":\"text\"", "modalities" },
            { Chat, "\"modalities\":[1]", "modalities" },
            { Chat, "\"web_search_options\":{}", "web_search_options" },
            { Chat, "\"web_search_options\":{\"search_context_size\":\"low\"}", "web_search_options" },
            { Chat, "\"verbosity\":\"low\"", "verbosity" },
            { Chat, "\"verbosity\":3", "verbosity" },
            { Text, "\"best_of\":2", "best_of" },
            { Text, "\"best_of\":0", "best_of" },
            { Text, "\"best_of\":\"2\"", "best_of" },
            { Text, "\"echo\":true", "echo" },
            { Text, "\"echo\":\"yes\"", "echo" },
            { Text, "\"suffix\":\"tail\"", "suffix" },
            { Text, "\"suffix\":5", "suffix" },
            // fields that do not change the output, with wrong types or values
            { Chat, "\"store\":\"yes\"", "store" },
            { Chat, "\"metadata\":\"x\"", "metadata" },
            { Chat, "\"metadata\":{\"a\":1}", "metadata" },
            { Chat, "\"metadata\":{" + manyPairs + "}", "metadata" },
            { Chat, "\"metadata\":{\"" + new string('k', 65) + "\":\"v\"}", "metadata" },
            { Chat, "\"metadata\":{\"a\":\"" + new string('v', 513) + "\"}", "metadata" },
            { Chat, "\"service_tier\":\"turbo\"", "service_tier" },
            { Chat, "\"service_tier\":1", "service_tier" },
            { Chat, "\"reasoning_effort\":\"max\"", "reasoning_effort" },
            { Chat, "\"reasoning_effort\":[]", "reasoning_effort" },
            { Chat, "\"prediction\":\"x\"", "prediction" },
            { Chat, "\"prediction\":{\"type\":\"other\"}", "prediction.type" },
            { Chat, "\"safety_identifier\":5", "safety_identifier" },
            { Chat, "\"prompt_cache_key\":{}", "prompt_cache_key" },
        };
    }

    public static TheoryData<string, string> Accepted() => new()
    {
        { Chat, "\"store\":true,\"metadata\":{\"team\":\"potluck\"},\"service_tier\":\"auto\",\"user\":\"u-1\"" },
        { Chat, "\"reasoning_effort\":\"low\",\"safety_identifier\":\"s\",\"prompt_cache_key\":\"k\"" },
        { Chat, "\"prediction\":{\"type\":\"content\",\"content\":\"hello\"}" },
        { Chat, "\"modalities\":[\"text\"],\"verbosity\":\"medium\",\"audio\":null,\"web_search_options\":null" },
        { Chat, "\"logprobs\":false,\"top_logprobs\":0,\"logit_bias\":{},\"n\":1" },
        { Chat, "\"logprobs\":true,\"top_logprobs\":20,\"logit_bias\":{\"5\":-100,\"6\":100,\"7\":0.5}" },
        { Text, "\"best_of\":1,\"echo\":false,\"suffix\":\"\",\"logprobs\":0" },
        { Text, "\"logprobs\":5,\"n\":2,\"logit_bias\":{\"10\":-1}" },
    };

    private string Body(string path, string fields) =>
        "{\"model\":" + JsonSerializer.Serialize(pool.ModelName) +
        (path == Chat ? ",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]" : ",\"prompt\":\"x\"") + ",\"max_tokens\":1," + fields + "}";

    [Theory]
    [MemberData(nameof(Refused))]
    public async Task RefusedWithA400NamingTheField(string path, string fields, string param)
    {
        using var response = await pool.Http.PostAsync(path, new StringContent(Body(path, fields), Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{(int)response.StatusCode}: {text}");
        using var json = JsonDocument.Parse(text);
        var error = json.RootElement.GetProperty("error");
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        Assert.Equal(param, error.GetProperty("param").GetString());
        Assert.Contains(param.Split('.')[0], error.GetProperty("message").GetString());
    }

    [Theory]
    [MemberData(nameof(Accepted))]
    public async Task FieldsThatDoNotChangeTheOutputAreAccepted(string path, string fields)
    {
        using var response = await pool.Http.PostAsync(path, new StringContent(Body(path, fields), Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, text);
    }

    [Fact]
    public async Task BanningTheWholeVocabularyIsRefused()
    {
        var vocab = ((ModelFrontEnd)pool.Gateway.Services.GetService(typeof(ModelFrontEnd))!).VocabSize;
        Assert.True(vocab <= CompletionRequestParserLimits.MaxLogitBiasEntries, $"the test model's vocabulary ({vocab}) exceeds the entry cap");
        var bias = string.Join(",", Enumerable.Range(0, vocab).Select(i => $"\"{i}\":-100"));
        using var response = await pool.Http.PostAsync(Chat, new StringContent(Body(Chat, "\"logit_bias\":{" + bias + "}"), Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.BadRequest, text);
        Assert.Contains("bans every token", text);
    }
}

internal static class CompletionRequestParserLimits
{
    public const int MaxLogitBiasEntries = Api.CompletionRequestParser.MaxLogitBiasEntries;
}
