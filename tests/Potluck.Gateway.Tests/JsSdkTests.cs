using System.Text.Json;

namespace Potluck.Gateway.Tests;

/// <summary>The official openai npm package against the gateway (chat and completions, streaming and not).</summary>
[Collection(PoolCollection.Name)]
[ProcessTest]
public sealed class JsSdkTests(PoolFixture pool)
{
    private static string ScriptDirectory
    {
        get
        {
            // Next to this project's sources: tests/Potluck.Gateway.Tests/js (CI runs npm install there).
            var here = new DirectoryInfo(AppContext.BaseDirectory);
            for (var dir = here; dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "js", "sdk-check.mjs");
                if (File.Exists(candidate)) return Path.GetDirectoryName(candidate)!;
            }
            throw new DirectoryNotFoundException("tests/Potluck.Gateway.Tests/js not found above " + here.FullName);
        }
    }

    private static async Task<(int Code, string Out, string Err)> RunAsync(string file, string directory, TimeSpan timeout, params string[] args)
    {
        var run = await ChildProcess.RunAsync(ChildProcess.StartInfo(file, args, workingDirectory: directory), timeout);
        return (run.ExitCode, run.StandardOutput, run.StandardError);
    }

    [Fact]
    public async Task OfficialJsSdkDrivesTheGateway()
    {
        var dir = ScriptDirectory;
        if (!Directory.Exists(Path.Combine(dir, "node_modules", "openai")))
        {
            var install = await RunAsync("npm", dir, TimeSpan.FromMinutes(3), "install", "--no-audit", "--no-fund", "--loglevel=error");
            Assert.True(install.Code == 0, $"npm install failed: {install.Err}");
        }
        var baseUrl = new Uri(pool.Gateway.BaseAddress, "v1").ToString();
        var (code, stdout, stderr) = await RunAsync("node", dir, TimeSpan.FromMinutes(2), "sdk-check.mjs", baseUrl, pool.ModelName);
        Assert.True(code == 0, $"node exited {code}: {stderr}\n{stdout}");
        using var json = JsonDocument.Parse(stdout.Trim().Split('\n')[^1]);
        var root = json.RootElement;
        var chat = root.GetProperty("chat");
        Assert.Equal("chat.completion", chat.GetProperty("object").GetString());
        var stream = root.GetProperty("chatStream");
        Assert.Equal(chat.GetProperty("text").GetString(), stream.GetProperty("text").GetString());
        Assert.Equal("assistant", stream.GetProperty("role").GetString());
        Assert.Equal(chat.GetProperty("finish").GetString(), stream.GetProperty("finish").GetString());
        Assert.Equal(chat.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), stream.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.True(stream.GetProperty("chunks").GetInt32() >= 3);
        Assert.Equal(root.GetProperty("completion").GetProperty("text").GetString(), root.GetProperty("completionStream").GetProperty("text").GetString());
        Assert.True(root.GetProperty("completion").GetProperty("usage").GetProperty("prompt_tokens").GetInt32() > 0);
        Assert.Equal(404, root.GetProperty("notFound").GetProperty("status").GetInt32());
    }
}
