using System.Text.Json;

namespace Potluck.Gateway.Tests;

/// <summary>A tool-call round trip with the official openai npm package (tests/Potluck.Gateway.Tests/js/tools-check.mjs).</summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class ToolCallJsSdkTests(PoolFixture pool)
{
    private static string ScriptDirectory
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "js", "tools-check.mjs");
                if (File.Exists(candidate)) return Path.GetDirectoryName(candidate)!;
            }
            throw new DirectoryNotFoundException("tests/Potluck.Gateway.Tests/js not found above " + AppContext.BaseDirectory);
        }
    }

    [Fact]
    public async Task OfficialJsSdkMakesAToolCallRoundTrip()
    {
        var dir = ScriptDirectory;
        if (!Directory.Exists(Path.Combine(dir, "node_modules", "openai")))
        {
            var install = await ChildProcess.RunAsync(ChildProcess.StartInfo("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error"], workingDirectory: dir), TimeSpan.FromMinutes(3));
            Assert.True(install.ExitCode == 0, $"npm install failed: {install.StandardError}");
        }
        var run = await ChildProcess.RunAsync(ChildProcess.StartInfo("node", ["tools-check.mjs", new Uri(pool.Gateway.BaseAddress, "v1").ToString(), pool.ModelName], workingDirectory: dir),
            TimeSpan.FromMinutes(2));
        Assert.True(run.ExitCode == 0, $"node exited {run.ExitCode}: {run.StandardError}\n{run.StandardOutput}");
        using var json = JsonDocument.Parse(run.StandardOutput.Trim().Split('\n')[^1]);
        var root = json.RootElement;

        var call = root.GetProperty("call");
        Assert.Equal("tool_calls", call.GetProperty("finish").GetString());
        var toolCall = Assert.Single(call.GetProperty("toolCalls").EnumerateArray().ToList());
        Assert.Equal("get_weather", toolCall.GetProperty("function").GetProperty("name").GetString());
        var arguments = toolCall.GetProperty("function").GetProperty("arguments").GetString()!;
        using (var parsed = JsonDocument.Parse(arguments))
            Assert.Contains(parsed.RootElement.GetProperty("city").GetString(), new[] { "Paris", "Rome" });

        var stream = root.GetProperty("stream");
        Assert.Equal("tool_calls", stream.GetProperty("finish").GetString());
        var streamed = Assert.Single(stream.GetProperty("calls").EnumerateArray().ToList());
        Assert.Equal("get_weather", streamed.GetProperty("name").GetString());
        Assert.Equal(arguments, streamed.GetProperty("arguments").GetString());
        Assert.StartsWith("call_", streamed.GetProperty("id").GetString());

        var answer = root.GetProperty("answer");
        Assert.Contains(answer.GetProperty("finish").GetString(), new[] { "stop", "length" });
        Assert.Equal(JsonValueKind.Null, answer.GetProperty("toolCalls").ValueKind);
    }
}
