using System.Text.Json;

namespace Potluck.Gateway.Tests;

/// <summary>The official @anthropic-ai/sdk npm package against /v1/messages (messages, streaming, errors, a tool-use round trip).</summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class AnthropicJsSdkTests(PoolFixture pool)
{
    private static string ScriptDirectory
    {
        get
        {
            // tests/Potluck.Gateway.Tests/js, next to this project's sources (CI runs npm install there).
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "js", "messages-check.mjs");
                if (File.Exists(candidate)) return Path.GetDirectoryName(candidate)!;
            }
            throw new DirectoryNotFoundException("tests/Potluck.Gateway.Tests/js not found above " + AppContext.BaseDirectory);
        }
    }

    private static async Task<JsonElement> RunScriptAsync(string script, params string[] args)
    {
        var dir = ScriptDirectory;
        if (!Directory.Exists(Path.Combine(dir, "node_modules", "@anthropic-ai", "sdk")))
        {
            var install = await ChildProcess.RunAsync(ChildProcess.StartInfo("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error"], workingDirectory: dir),
                TimeSpan.FromMinutes(3));
            Assert.True(install.ExitCode == 0, $"npm install failed: {install.StandardError}");
        }
        var run = await ChildProcess.RunAsync(ChildProcess.StartInfo("node", [script, .. args], workingDirectory: dir), TimeSpan.FromMinutes(2));
        Assert.True(run.ExitCode == 0, $"node exited {run.ExitCode}: {run.StandardError}\n{run.StandardOutput}");
        using var json = JsonDocument.Parse(run.StandardOutput.Trim().Split('\n')[^1]);
        return json.RootElement.Clone();
    }

    [Fact]
    public async Task OfficialAnthropicJsSdkDrivesMessages()
    {
        var root = await RunScriptAsync("messages-check.mjs", pool.Gateway.BaseAddress.ToString().TrimEnd('/'), pool.ModelName);
        var message = root.GetProperty("message");
        Assert.StartsWith("msg_", message.GetProperty("id").GetString());
        Assert.Equal("message", message.GetProperty("type").GetString());
        Assert.Equal("assistant", message.GetProperty("role").GetString());
        Assert.NotEmpty(message.GetProperty("text").GetString()!);
        Assert.True(message.GetProperty("usage").GetProperty("input_tokens").GetInt32() > 3);

        var stream = root.GetProperty("stream");
        Assert.Equal(["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"],
            stream.GetProperty("events").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(message.GetProperty("text").GetString(), stream.GetProperty("text").GetString());
        Assert.Equal(message.GetProperty("text").GetString(), stream.GetProperty("finalText").GetString());
        Assert.Equal(message.GetProperty("stop").GetString(), stream.GetProperty("stop").GetString());
        Assert.Equal(message.GetProperty("usage").GetProperty("output_tokens").GetInt32(), stream.GetProperty("usage").GetProperty("output_tokens").GetInt32());
        Assert.Equal(message.GetProperty("usage").GetProperty("input_tokens").GetInt32(), stream.GetProperty("usage").GetProperty("input_tokens").GetInt32());

        var tools = root.GetProperty("tools");
        Assert.Equal("tool_use", tools.GetProperty("stop").GetString());
        Assert.Equal("weather", tools.GetProperty("name").GetString());
        Assert.Contains(tools.GetProperty("input").GetProperty("city").GetString(), new[] { "Paris", "Oslo" });
        Assert.Equal("tool_use", tools.GetProperty("streamedStop").GetString());
        Assert.Equal(tools.GetProperty("input").GetRawText(), tools.GetProperty("streamedInput").GetRawText());
        Assert.Contains(tools.GetProperty("answerStop").GetString(), new[] { "end_turn", "max_tokens" });
        Assert.NotEmpty(tools.GetProperty("answerText").GetString()!);

        Assert.Equal(404, root.GetProperty("notFound").GetProperty("status").GetInt32());
        Assert.Equal("not_found_error", root.GetProperty("notFound").GetProperty("type").GetString());
        var bad = root.GetProperty("badRequest");
        Assert.Equal(400, bad.GetProperty("status").GetInt32());
        Assert.Equal("invalid_request_error", bad.GetProperty("type").GetString());
        Assert.Contains("max_tokens", bad.GetProperty("message").GetString());
    }
}
