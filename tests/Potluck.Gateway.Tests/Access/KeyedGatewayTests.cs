using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Models;

namespace Potluck.Gateway.Tests.Access;

/// <summary>A loopback gateway with API keys (flags and a keys file with per-key limits), an admin key and one CORS origin.</summary>
public sealed class KeyedGateway : AccessGateway
{
    public const string ClientKey = "client-key-0001";
    public const string OtherKey = "other-key-00001";
    public const string LimitedKey = "limited-key-0001";
    public const string SingleKey = "single-key-00001";
    public const string AdminKey = "admin-key-00001";
    public const string Origin = "http://app.example";

    protected override GatewayOptions Configure(GatewayOptions options)
    {
        var file = Path.Combine(Directory, "keys.txt");
        File.WriteAllLines(file, ["# per-key limits", $"limited:{LimitedKey} rpm=3", $"single:{SingleKey} concurrency=1", OtherKey]);
        return options with { ApiKeys = [ClientKey], ApiKeysFile = file, AdminKey = AdminKey, CorsOrigins = [Origin] };
    }

    public HttpClient Client(string key, bool bearer = true)
    {
        var http = Client();
        if (bearer) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        else http.DefaultRequestHeaders.Add("x-api-key", key);
        return http;
    }
}

[ProcessTest]
public sealed class KeyedGatewayTests(KeyedGateway gateway) : IClassFixture<KeyedGateway>
{
    private static async Task<JsonElement> ErrorOf(HttpResponseMessage response)
    {
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        return json.RootElement.GetProperty("error").Clone();
    }

    private static async Task AssertInvalidKey(HttpResponseMessage response)
    {
        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        Assert.Equal("Bearer", response.Headers.WwwAuthenticate.Single().Scheme);
        var error = await ErrorOf(response);
        Assert.Equal("invalid_api_key", error.GetProperty("code").GetString());
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        Assert.Equal(JsonValueKind.Null, error.GetProperty("param").ValueKind);
    }

    private StringContent Chat() => new(
        $$"""{"model":{{JsonSerializer.Serialize(gateway.ModelName)}},"messages":[{"role":"user","content":"hi"}],"max_tokens":2}""", Encoding.UTF8, "application/json");

    [Fact]
    public async Task No_key_or_a_wrong_key_is_401_invalid_api_key()
    {
        using var anonymous = gateway.Client();
        await AssertInvalidKey(await anonymous.GetAsync("v1/models"));
        await AssertInvalidKey(await anonymous.PostAsync("v1/chat/completions", Chat()));
        using var wrong = gateway.Client("wrong-key-00001");
        using var response = await wrong.GetAsync("v1/models");
        var body = await response.Content.ReadAsStringAsync();
        await AssertInvalidKey(response);
        Assert.DoesNotContain("wrong-key-00001", body);
        using var wrongHeader = gateway.Client("wrong-key-00001", bearer: false);
        await AssertInvalidKey(await wrongHeader.PostAsync("v1/completions", Chat()));
        // "unused", what the README's SDK examples send, is a wrong key once keys are configured.
        using var unused = gateway.Client("unused");
        await AssertInvalidKey(await unused.GetAsync("v1/models"));
    }

    [Fact]
    public async Task Bearer_and_x_api_key_are_both_accepted_for_keys_from_flags_and_the_file()
    {
        foreach (var key in new[] { KeyedGateway.ClientKey, KeyedGateway.OtherKey })
        foreach (var bearer in new[] { true, false })
        {
            using var http = gateway.Client(key, bearer);
            using var models = await http.GetAsync("v1/models");
            Assert.Equal(HttpStatusCode.OK, models.StatusCode);
            // Through to the generation service: no nodes, so the pool is unavailable (not an access error).
            using var chat = await http.PostAsync("v1/chat/completions", Chat());
            Assert.Equal(HttpStatusCode.ServiceUnavailable, chat.StatusCode);
            Assert.Equal("pool_unavailable", (await ErrorOf(chat)).GetProperty("code").GetString());
        }
        // The admin key also works on the API.
        using var admin = gateway.Client(KeyedGateway.AdminKey);
        Assert.Equal(HttpStatusCode.OK, (await admin.GetAsync("v1/models")).StatusCode);
    }

    [Fact]
    public async Task The_openai_sdk_works_with_the_key_and_gets_401_without_it()
    {
        var options = new OpenAIClientOptions { Endpoint = new Uri(gateway.BaseAddress, "v1"), NetworkTimeout = TimeSpan.FromSeconds(30) };
        var models = new OpenAIModelClient(new ApiKeyCredential(KeyedGateway.ClientKey), options);
        OpenAIModelCollection list = await models.GetModelsAsync();
        Assert.Equal(gateway.ModelName, Assert.Single(list).Id);
        var refused = await Assert.ThrowsAsync<ClientResultException>(() => new OpenAIModelClient(new ApiKeyCredential("unused"), options).GetModelsAsync());
        Assert.Equal(401, refused.Status);
    }

    [Fact]
    public async Task Operator_endpoints_need_the_admin_key_and_api_keys_get_403()
    {
        using var anonymous = gateway.Client();
        using var client = gateway.Client(KeyedGateway.ClientKey);
        using var admin = gateway.Client(KeyedGateway.AdminKey, bearer: false);
        (HttpMethod Method, string Path, string? Body)[] endpoints =
        [
            (HttpMethod.Get, "api/pool", null),
            (HttpMethod.Get, "api/sessions/chatcmpl-0123", null),
            (HttpMethod.Post, "api/sessions/chatcmpl-0123/cancel", "{}"),
            (HttpMethod.Get, "metrics", null),
        ];
        foreach (var (method, path, body) in endpoints)
        {
            HttpRequestMessage Request() => new(method, path) { Content = body is null ? null : new StringContent(body, Encoding.UTF8, "application/json") };
            await AssertInvalidKey(await anonymous.SendAsync(Request()));
            using var forbidden = await client.SendAsync(Request());
            Assert.True(forbidden.StatusCode == HttpStatusCode.Forbidden, $"{method} {path} with an API key: {(int)forbidden.StatusCode}");
            Assert.Equal("admin_key_required", (await ErrorOf(forbidden)).GetProperty("code").GetString());
            using var allowed = await admin.SendAsync(Request());
            Assert.True(allowed.StatusCode is not (HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden),
                $"{method} {path} with the admin key: {(int)allowed.StatusCode} {await allowed.Content.ReadAsStringAsync()}");
        }
        Assert.Equal(HttpStatusCode.OK, (await admin.GetAsync("api/pool")).StatusCode);
        // Announcing moved to the pool endpoint (member certificates); the API port no longer takes it, even from the admin.
        using (var announce = await admin.PostAsync("api/join/announce", new StringContent("{}", Encoding.UTF8, "application/json")))
            Assert.Equal(HttpStatusCode.NotFound, announce.StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await admin.GetAsync("api/sessions/chatcmpl-0123")).StatusCode);
    }

    [Fact]
    public async Task Probes_need_no_key_and_show_no_routes()
    {
        using var anonymous = gateway.Client();
        using var health = await anonymous.GetAsync("healthz");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        Assert.Equal("""{"status":"live"}""", await health.Content.ReadAsStringAsync());
        using var ready = await anonymous.GetAsync("readyz");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
        using var json = JsonDocument.Parse(await ready.Content.ReadAsStringAsync());
        Assert.Equal("not_ready", json.RootElement.GetProperty("status").GetString());
        Assert.False(json.RootElement.TryGetProperty("route", out _));
    }

    /// <summary>What the dashboard's script reads besides /api/pool: operator reads, like it.</summary>
    private static readonly string[] DashboardReads = ["api/stats/recent", "api/sessions", "api/events"];

    [Fact]
    public async Task The_dashboard_logs_in_with_the_admin_key_and_its_cookie_never_authorizes_the_api()
    {
        var cookies = new CookieContainer();
        using var browser = gateway.Client(new SocketsHttpHandler { CookieContainer = cookies, AllowAutoRedirect = false });
        var loginPage = await browser.GetStringAsync("");
        Assert.Contains("action=\"/login\"", loginPage);
        Assert.DoesNotContain("dashboard.js", loginPage);
        // The login form's style (and the page's script) need no key: embedded files, nothing secret in them.
        Assert.Equal(HttpStatusCode.OK, (await browser.GetAsync("dashboard/dashboard.css")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await browser.GetAsync("dashboard/index.html")).StatusCode);
        await AssertInvalidKey(await browser.GetAsync("api/pool"));
        foreach (var read in DashboardReads) await AssertInvalidKey(await browser.GetAsync(read));

        using var wrong = await browser.PostAsync("login", new FormUrlEncodedContent([new("key", KeyedGateway.ClientKey)]));
        Assert.Equal(HttpStatusCode.Unauthorized, wrong.StatusCode);
        Assert.Empty(cookies.GetAllCookies());

        using var login = await browser.PostAsync("login", new FormUrlEncodedContent([new("key", KeyedGateway.AdminKey)]));
        Assert.Equal(HttpStatusCode.SeeOther, login.StatusCode);
        var setCookie = Assert.Single(login.Headers.GetValues("Set-Cookie"));
        Assert.Contains("httponly", setCookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", setCookie, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("secure", setCookie.Split(';', StringSplitOptions.TrimEntries).Skip(1), StringComparer.OrdinalIgnoreCase); // plain HTTP
        Assert.DoesNotContain(KeyedGateway.AdminKey, setCookie);

        var page = await browser.GetStringAsync("");
        Assert.Contains("action=\"/logout\"", page);
        Assert.Contains("dashboard.js", page);
        Assert.Equal(HttpStatusCode.OK, (await browser.GetAsync("api/pool")).StatusCode);
        foreach (var read in DashboardReads) Assert.Equal(HttpStatusCode.OK, (await browser.GetAsync(read)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await browser.GetAsync("metrics")).StatusCode);
        // CSRF: the cookie is no key for the OpenAI API or for an operator action.
        await AssertInvalidKey(await browser.GetAsync("v1/models"));
        await AssertInvalidKey(await browser.PostAsync("v1/chat/completions", Chat()));
        await AssertInvalidKey(await browser.PostAsync("api/sessions/chatcmpl-0123/cancel", new StringContent("{}", Encoding.UTF8, "application/json")));

        // A login posted from another origin is refused.
        using var crossSite = new HttpRequestMessage(HttpMethod.Post, "login") { Content = new FormUrlEncodedContent([new("key", KeyedGateway.AdminKey)]) };
        crossSite.Headers.Add("Origin", "http://evil.example");
        Assert.Equal(HttpStatusCode.Forbidden, (await browser.SendAsync(crossSite)).StatusCode);

        using var logout = await browser.PostAsync("logout", new FormUrlEncodedContent([]));
        Assert.Equal(HttpStatusCode.SeeOther, logout.StatusCode);
        await AssertInvalidKey(await browser.GetAsync("api/pool"));
    }

    [Fact]
    public async Task Post_bodies_must_be_json()
    {
        using var http = gateway.Client(KeyedGateway.ClientKey);
        var body = $$"""{"model":{{JsonSerializer.Serialize(gateway.ModelName)}},"messages":[{"role":"user","content":"hi"}]}""";
        foreach (var type in new[] { "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x" })
        {
            using var content = new StringContent(body, Encoding.UTF8);
            content.Headers.ContentType = MediaTypeHeaderValue.Parse(type);
            using var response = await http.PostAsync("v1/chat/completions", content);
            Assert.Equal(HttpStatusCode.UnsupportedMediaType, response.StatusCode);
            Assert.Equal("unsupported_media_type", (await ErrorOf(response)).GetProperty("code").GetString());
        }
        using var none = new ByteArrayContent(Encoding.UTF8.GetBytes(body));
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, (await http.PostAsync("v1/completions", none)).StatusCode);
        using var json = new StringContent(body, Encoding.UTF8, "application/json");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, (await http.PostAsync("v1/chat/completions", json)).StatusCode);
    }

    [Fact]
    public async Task A_foreign_host_header_is_400()
    {
        using var http = gateway.Client(KeyedGateway.ClientKey);
        using var rebound = new HttpRequestMessage(HttpMethod.Get, "v1/models");
        rebound.Headers.Host = $"attacker.example:{gateway.BaseAddress.Port}";
        Assert.Equal(HttpStatusCode.BadRequest, (await http.SendAsync(rebound)).StatusCode);
        using var local = new HttpRequestMessage(HttpMethod.Get, "v1/models");
        local.Headers.Host = $"localhost:{gateway.BaseAddress.Port}";
        Assert.Equal(HttpStatusCode.OK, (await http.SendAsync(local)).StatusCode);
    }

    [Fact]
    public async Task Cors_preflight_is_allowed_only_for_the_configured_origin()
    {
        using var http = gateway.Client();
        async Task<HttpResponseMessage> Preflight(string origin)
        {
            using var request = new HttpRequestMessage(HttpMethod.Options, "v1/chat/completions");
            request.Headers.Add("Origin", origin);
            request.Headers.Add("Access-Control-Request-Method", "POST");
            request.Headers.Add("Access-Control-Request-Headers", "authorization,content-type");
            return await http.SendAsync(request);
        }
        using var allowed = await Preflight(KeyedGateway.Origin);
        Assert.True(allowed.IsSuccessStatusCode, $"{(int)allowed.StatusCode}");
        Assert.Equal(KeyedGateway.Origin, allowed.Headers.GetValues("Access-Control-Allow-Origin").Single());
        Assert.False(allowed.Headers.Contains("Access-Control-Allow-Credentials"));
        using var foreign = await Preflight("http://evil.example");
        Assert.False(foreign.Headers.Contains("Access-Control-Allow-Origin"));
    }

    [Fact]
    public async Task A_key_over_its_request_rate_gets_429_with_retry_after_and_other_keys_do_not()
    {
        using var limited = gateway.Client(KeyedGateway.LimitedKey);
        for (var i = 0; i < 3; i++) Assert.Equal(HttpStatusCode.OK, (await limited.GetAsync("v1/models")).StatusCode);
        using var over = await limited.GetAsync("v1/models");
        Assert.Equal(HttpStatusCode.TooManyRequests, over.StatusCode);
        var retryAfter = over.Headers.RetryAfter?.Delta ?? throw new Xunit.Sdk.XunitException("no Retry-After");
        Assert.InRange(retryAfter.TotalSeconds, 1, 20);
        var error = await ErrorOf(over);
        Assert.Equal("rate_limit_exceeded", error.GetProperty("code").GetString());
        Assert.Contains("'limited'", error.GetProperty("message").GetString());
        // Checked before capacity: a completion is refused before the generation service (which would say 503).
        Assert.Equal(HttpStatusCode.TooManyRequests, (await limited.PostAsync("v1/chat/completions", Chat())).StatusCode);
        using var other = gateway.Client(KeyedGateway.ClientKey);
        Assert.Equal(HttpStatusCode.OK, (await other.GetAsync("v1/models")).StatusCode);
    }

    [Fact]
    public async Task A_key_over_its_concurrency_gets_429_until_its_request_ends()
    {
        using var single = gateway.Client(KeyedGateway.SingleKey);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var held = new HeldBody(release.Task);
        var first = single.PostAsync("v1/chat/completions", held);
        try
        {
            // Once the held request is in, a second one from the same key is refused at once.
            var deadline = DateTime.UtcNow.AddSeconds(20);
            HttpResponseMessage second;
            while (true)
            {
                second = await single.GetAsync("v1/models");
                if (second.StatusCode == HttpStatusCode.TooManyRequests || DateTime.UtcNow > deadline) break;
                await Task.Delay(50);
            }
            Assert.Equal(HttpStatusCode.TooManyRequests, second.StatusCode);
            Assert.Equal(TimeSpan.FromSeconds(1), second.Headers.RetryAfter?.Delta);
            Assert.Contains("at most 1 at once", (await ErrorOf(second)).GetProperty("message").GetString());
            using var other = gateway.Client(KeyedGateway.ClientKey);
            Assert.Equal(HttpStatusCode.OK, (await other.GetAsync("v1/models")).StatusCode);
        }
        finally
        {
            release.SetResult();
        }
        using var done = await first;
        Assert.NotEqual(HttpStatusCode.TooManyRequests, done.StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await single.GetAsync("v1/models")).StatusCode);
    }

    /// <summary>A JSON body that stops halfway until released: the request holds its concurrency permit meanwhile.</summary>
    private sealed class HeldBody : HttpContent
    {
        private readonly Task _release;

        public HeldBody(Task release)
        {
            _release = release;
            Headers.ContentType = new MediaTypeHeaderValue("application/json");
        }

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            await stream.WriteAsync("{\"model\":"u8.ToArray());
            await stream.FlushAsync();
            await _release;
            await stream.WriteAsync("\"nope\",\"messages\":[]}"u8.ToArray());
        }

        protected override bool TryComputeLength(out long length)
        {
            length = -1;
            return false;
        }
    }
}
