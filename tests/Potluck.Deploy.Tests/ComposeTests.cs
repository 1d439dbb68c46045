using System.Text.Json.Nodes;

namespace Potluck.Deploy.Tests;

/// <summary>
/// `docker compose up` with the repository's docker-compose.yml, as the README tells users to run it (on free
/// loopback ports and a unique project name): the one-shot services make the pool's secrets and the demo model, the
/// nodes join with the invite over mutual TLS, Redis refuses a client without the password, the pool answers a chat
/// like single-node llama.cpp, and Prometheus (observability profile) scrapes the gateway.
/// </summary>
[Collection(DockerCollection.Name)]
[ProcessTest]
public sealed class ComposeTests(PotluckImageFixture image)
{
    [DockerFact]
    public async Task Compose_up_serves_a_chat_over_mutual_tls_that_matches_llama_cpp_and_prometheus_scrapes_the_gateway()
    {
        image.EnsureReady();
        var project = $"{PotluckImageFixture.ComposeProjectPrefix}{image.RunId}";
        var gatewayPort = Ports.Free();
        var prometheusPort = Ports.Free();
        var environment = new Dictionary<string, string>
        {
            ["POTLUCK_IMAGE"] = PotluckImageFixture.Image,
            ["POTLUCK_PORT"] = gatewayPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["POTLUCK_PROMETHEUS_PORT"] = prometheusPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
            // Bit-exact hops, so the answer can be compared with llama.cpp token for token.
            ["POTLUCK_WIRE"] = "F32",
            // No admin key: compose's default (the API is published on the host's loopback only), which Prometheus
            // scrapes without credentials. docs/deployment.md says what to set before publishing it further.
        };
        var compose = $"compose -p {project} -f docker-compose.yml --profile observability";
        try
        {
            var up = ProcessRunner.Run("docker", $"{compose} up -d --wait --wait-timeout 240", TimeSpan.FromMinutes(5), environment: environment);
            Assert.True(up.ExitCode == 0, $"compose up failed:\n{up.Tail()}\n{Logs(compose, environment)}");

            using var client = new GatewayClient(gatewayPort);
            await client.WaitUntilReadyAsync(TimeSpan.FromMinutes(2));

            // The pool's secrets were made by `pool`; Redis answers nobody without the password.
            var noPassword = ProcessRunner.Run("docker", $"{compose} exec -T redis redis-cli ping", TimeSpan.FromMinutes(1), environment: environment);
            Assert.Contains("NOAUTH", noPassword.Output);
            var secrets = ProcessRunner.RunChecked("docker", $"{compose} exec -T node1 ls /secrets", TimeSpan.FromMinutes(1), environment: environment);
            Assert.Equal(["ca.crt", "node.token", "redis.password"], secrets.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Order(StringComparer.Ordinal));
            // Every stage is reached over TLS (mutual: nodes require a pool certificate).
            var endpoints = await client.EndpointsAsync();
            Assert.Superset(new HashSet<string> { "node1", "node2", "node3" }, endpoints.Keys.ToHashSet());
            Assert.All(endpoints.Values, endpoint => Assert.StartsWith("https://", endpoint));
            const string message = "What should I bring?";
            const int maxTokens = 12;
            var answer = await client.ChatAsync(message, maxTokens);
            // The compose `model` service generated its own copy; the generator is deterministic, so the host's is the same file.
            var expected = GreedyReference.Chat(image.ModelPath, message, maxTokens);
            Assert.NotEmpty(expected.Tokens);
            Assert.Equal(expected.Tokens, answer.Tokens);
            Assert.Equal(expected.Text, answer.Text);
            Assert.Superset(new HashSet<string> { "node1", "node2", "node3" }, await client.HealthyNodeIdsAsync());

            await WaitForScrapeAsync(prometheusPort, TimeSpan.FromSeconds(60));
        }
        finally
        {
            ProcessRunner.Run("docker", $"{compose} down -v --timeout 10", TimeSpan.FromMinutes(2), environment: environment);
        }
    }

    [DockerFact]
    public void Compose_up_with_a_model_folder_that_lacks_the_file_fails_with_a_clear_line_and_starts_no_pool()
    {
        image.EnsureReady();
        var project = $"{PotluckImageFixture.ComposeProjectPrefix}{image.RunId}-nomodel";
        var emptyModels = Directory.CreateTempSubdirectory("potluck-no-model");
        var environment = new Dictionary<string, string>
        {
            ["POTLUCK_IMAGE"] = PotluckImageFixture.Image,
            ["POTLUCK_PORT"] = Ports.Free().ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["POTLUCK_MODEL_DIR"] = emptyModels.FullName,
            ["POTLUCK_MODEL_FILE"] = "missing.gguf",
        };
        var compose = $"compose -p {project} -f docker-compose.yml";
        try
        {
            var up = ProcessRunner.Run("docker", $"{compose} up -d --wait --wait-timeout 120", TimeSpan.FromMinutes(3), environment: environment);
            Assert.NotEqual(0, up.ExitCode);
            var modelLogs = ProcessRunner.Run("docker", $"{compose} logs --no-color model", TimeSpan.FromMinutes(1), environment: environment).Output;
            Assert.Contains("model file not found: /models/missing.gguf", modelLogs);
            // Nothing that depends on the model was started: no crash-looping gateway or nodes.
            var running = ProcessRunner.RunChecked("docker", $"{compose} ps --status running --services", TimeSpan.FromMinutes(1), environment: environment);
            Assert.DoesNotContain("gateway", running);
            Assert.DoesNotContain("node", running);
        }
        finally
        {
            ProcessRunner.Run("docker", $"{compose} down -v --timeout 5", TimeSpan.FromMinutes(2), environment: environment);
            emptyModels.Delete(recursive: true);
        }
    }

    /// <summary>Prometheus lists the gateway target as up once a scrape of /metrics succeeded.</summary>
    private static async Task WaitForScrapeAsync(int port, TimeSpan timeout)
    {
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(10) };
        var deadline = DateTime.UtcNow + timeout;
        var last = "no answer";
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                var targets = JsonNode.Parse(await http.GetStringAsync("/api/v1/targets"))!;
                foreach (var target in targets["data"]!["activeTargets"]!.AsArray())
                {
                    if (target!["labels"]!["job"]!.GetValue<string>() != "potluck-gateway") continue;
                    last = $"{target["health"]} {target["lastError"]}";
                    if (target["health"]!.GetValue<string>() == "up") return;
                }
            }
            catch (HttpRequestException e)
            {
                last = e.Message;
            }
            await Task.Delay(1000);
        }
        throw new TimeoutException($"Prometheus never scraped the gateway: {last}");
    }

    private static string Logs(string compose, IReadOnlyDictionary<string, string> environment) =>
        ProcessRunner.Run("docker", $"{compose} logs --no-color --tail 40", TimeSpan.FromMinutes(1), environment: environment).Tail(8000);
}
