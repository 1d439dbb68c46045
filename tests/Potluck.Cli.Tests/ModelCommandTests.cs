using System.Text.Json;

namespace Potluck.Cli.Tests;

/// <summary>`potluck model` against real files: the generated demo model, a missing file and random bytes.</summary>
[ProcessTest]
public sealed class ModelCommandTests : IClassFixture<TempHome>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);
    private readonly TempHome _home;

    public ModelCommandTests(TempHome home) => _home = home;

    [Fact]
    public async Task CreateDemoWritesAModelThatInspectReads()
    {
        var output = _home.File("demo.gguf");
        var created = await PotluckProcess.RunAsync(_home.Path, Timeout, "model", "create-demo", "--output", output);
        Assert.True(created.ExitCode == 0, created.ToString());
        Assert.Equal(output, created.Stdout.Trim());
        Assert.True(File.Exists(output));
        // Cached under POTLUCK_HOME, so `serve` never generates it twice.
        Assert.NotEmpty(Directory.GetFiles(Path.Combine(_home.Path, "models"), "*.gguf"));

        var inspected = await PotluckProcess.RunAsync(_home.Path, Timeout, "model", "inspect", output, "--json");
        Assert.True(inspected.ExitCode == 0, inspected.ToString());
        using var json = JsonDocument.Parse(inspected.Stdout);
        var root = json.RootElement;
        Assert.Equal("llama", root.GetProperty("Architecture").GetString());
        Assert.Equal(8, root.GetProperty("LayerCount").GetInt32());
        Assert.Equal(256, root.GetProperty("EmbeddingLength").GetInt32());
        Assert.Equal("Q8_0", root.GetProperty("WeightType").GetString());
        Assert.Equal(new FileInfo(output).Length, root.GetProperty("FileBytes").GetInt64());

        var table = await PotluckProcess.RunAsync(_home.Path, Timeout, "model", "inspect", output);
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Contains("Tensors by type", table.Stdout);
        Assert.Contains("Q8_0", table.Stdout);
    }

    [Fact]
    public async Task InspectingAMissingFileFailsWithOneLine()
    {
        var missing = _home.File("no-such-model.gguf");
        var run = await PotluckProcess.RunAsync(_home.Path, Timeout, "model", "inspect", missing);
        Assert.True(run.ExitCode == 3, run.ToString()); // cannot load the model
        TextAssert.OneLineError(run, "not found");
        Assert.Contains(missing, run.Stderr);
    }

    [Fact]
    public async Task InspectingRandomBytesFailsWithOneLine()
    {
        var corrupt = _home.File("corrupt.gguf");
        var bytes = new byte[64 * 1024];
        new Random(7).NextBytes(bytes);
        await File.WriteAllBytesAsync(corrupt, bytes);

        var run = await PotluckProcess.RunAsync(_home.Path, Timeout, "model", "inspect", corrupt);
        Assert.True(run.ExitCode == 3, run.ToString()); // cannot load the model
        TextAssert.OneLineError(run, "cannot read model");

        var verbose = await PotluckProcess.RunAsync(_home.Path, Timeout, "model", "inspect", corrupt, "--verbose");
        Assert.Equal(3, verbose.ExitCode);
        Assert.Contains("   at ", verbose.Stderr);
    }
}
