namespace Potluck.Cli.Tests;

/// <summary>Exit codes and messages of the real executable for help and bad command lines.</summary>
[ProcessTest]
public sealed class UsageTests : IClassFixture<TempHome>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private readonly TempHome _home;

    public UsageTests(TempHome home) => _home = home;

    [Theory]
    [InlineData("serve")]
    [InlineData("node")]
    [InlineData("gateway")]
    [InlineData("model")]
    [InlineData("model inspect")]
    [InlineData("model create-demo")]
    [InlineData("chat")]
    [InlineData("bench")]
    public async Task HelpOnEveryCommandShowsUsageAndExamples(string command)
    {
        var run = await PotluckProcess.RunAsync(_home.Path, Timeout, [.. command.Split(' '), "--help"]);
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains($"potluck {command}", run.Stdout);
        Assert.Contains("Examples:", run.Stdout);
        Assert.Contains("  potluck ", run.Stdout[run.Stdout.IndexOf("Examples:", StringComparison.Ordinal)..]);
    }

    [Theory]
    [InlineData("unknown command or argument 'frobnicate'", "frobnicate")]
    [InlineData("required command", "")]
    [InlineData("--nodes must be a whole number (got 'many')", "serve", "--nodes", "many")]
    [InlineData("--wire must be one of F16, F32 (got 'F8')", "gateway", "--model", "x.gguf", "--wire", "F8")]
    [InlineData("must be a multiple of --replicas", "serve", "--nodes", "3", "--replicas", "2")]
    [InlineData("--port must be between", "serve", "--port", "70000")]
    [InlineData("required argument missing", "model", "inspect")]
    [InlineData("option '--model' is required", "node")]
    [InlineData("--layers must be A:B", "node", "--model", "x.gguf", "--layers", "8:2")]
    [InlineData("--url must be an http", "chat", "--url", "ftp://example")]
    public async Task UsageErrorsExitTwoWithOneClearLine(string expected, params string[] arguments)
    {
        arguments = arguments.Where(a => a.Length > 0).ToArray();
        var run = await PotluckProcess.RunAsync(_home.Path, Timeout, arguments);
        Assert.True(run.ExitCode == 2, run.ToString());
        TextAssert.OneLineError(run, expected);
        Assert.Equal("", run.Stdout);
    }

    [Fact]
    public async Task ChatAgainstNothingFailsWithOneLine()
    {
        var port = Ports.Free(); // free, so nothing answers there
        var run = await PotluckProcess.RunWithInputAsync(_home.Path, Timeout, "hello\n", "chat", "--url", $"http://127.0.0.1:{port}");
        Assert.True(run.ExitCode == 1, run.ToString());
        TextAssert.OneLineError(run, "cannot reach");
    }

    [Fact]
    public async Task VersionPrintsAndExitsZero()
    {
        // The container image's build runs `potluck --version` as its smoke test.
        var run = await PotluckProcess.RunAsync(_home.Path, Timeout, "--version");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Matches(@"^\d+\.\d+", run.Stdout.Trim());
    }
}
