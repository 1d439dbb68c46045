namespace Potluck.Cli.Tests;

internal static class TextAssert
{
    /// <summary>An error for people: exactly one "potluck: error:" line and no stack trace.</summary>
    public static void OneLineError(PotluckRun run, string expectedFragment)
    {
        var lines = run.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var errors = lines.Where(l => l.StartsWith("potluck: error:", StringComparison.Ordinal)).ToList();
        Assert.True(errors.Count == 1, $"expected one error line\n{run}");
        Assert.Contains(expectedFragment, errors[0], StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("   at ", run.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", run.Stderr, StringComparison.Ordinal);
    }
}
