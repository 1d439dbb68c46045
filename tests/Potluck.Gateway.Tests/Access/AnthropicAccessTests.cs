using System.Net;
using System.Text;
using System.Text.Json;
using Anthropic;
using Anthropic.Exceptions;
using Anthropic.Models.Messages;

namespace Potluck.Gateway.Tests.Access;

/// <summary>/v1/messages is under the same API-key policy and rate limits as the OpenAI endpoints, answered in Anthropic's shape.</summary>
[ProcessTest]
public sealed class AnthropicAccessTests(KeyedGateway gateway) : IClassFixture<KeyedGateway>
{
    private StringContent Body() => new(
        $$"""{"model":{{JsonSerializer.Serialize(gateway.ModelName)}},"max_tokens":2,"messages":[{"role":"user","content":"hi"}]}""", Encoding.UTF8, "application/json");

    [Fact]
    public async Task Without_a_valid_key_messages_is_401_authentication_error()
    {
        using var anonymous = gateway.Client();
        using var none = await anonymous.PostAsync("v1/messages", Body());
        Assert.Equal(HttpStatusCode.Unauthorized, none.StatusCode);
        AnthropicSdkTests.AssertAnthropicError(await none.Content.ReadAsStringAsync(), "authentication_error", "x-api-key");

        var sdk = new AnthropicClient { ApiKey = "wrong-key-00001", BaseUrl = gateway.BaseAddress.ToString().TrimEnd('/'), MaxRetries = 0 };
        var error = await Assert.ThrowsAsync<AnthropicUnauthorizedException>(() => sdk.Messages.Create(new MessageCreateParams
        {
            Model = gateway.ModelName,
            MaxTokens = 2,
            Messages = [new UserMessageParam("hi")],
        }));
        Assert.DoesNotContain("wrong-key-00001", error.ResponseBody);
        AnthropicSdkTests.AssertAnthropicError(error.ResponseBody, "authentication_error", "Incorrect API key");
    }

    [Fact]
    public async Task A_valid_x_api_key_with_anthropic_version_passes_access_control()
    {
        using var client = gateway.Client(KeyedGateway.ClientKey, bearer: false);
        client.DefaultRequestHeaders.Add("anthropic-version", "2023-06-01");
        // Past authentication and validation: this gateway has no nodes, so the answer is the pool's 503.
        using var response = await client.PostAsync("v1/messages", Body());
        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        AnthropicSdkTests.AssertAnthropicError(await response.Content.ReadAsStringAsync(), "overloaded_error", "layers");
        using var invalid = await client.PostAsync("v1/messages", new StringContent("{}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, invalid.StatusCode);
    }

    [Fact]
    public async Task The_per_key_rate_limit_covers_messages_with_a_rate_limit_error()
    {
        using var limited = gateway.Client(KeyedGateway.LimitedKey, bearer: false);
        HttpResponseMessage? over = null;
        // rpm=3 for this key: the fourth request in the minute is refused.
        for (var i = 0; i < 4; i++)
        {
            over?.Dispose();
            over = await limited.PostAsync("v1/messages", new StringContent("{}", Encoding.UTF8, "application/json"));
            if (i < 3) Assert.Equal(HttpStatusCode.BadRequest, over.StatusCode);
        }
        using (over)
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, over!.StatusCode);
            Assert.NotNull(over.Headers.RetryAfter);
            AnthropicSdkTests.AssertAnthropicError(await over.Content.ReadAsStringAsync(), "rate_limit_error", "Retry after");
        }
    }
}
