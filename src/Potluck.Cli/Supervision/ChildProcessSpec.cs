namespace Potluck.Cli.Supervision;

/// <summary>One child to start: a display name for log prefixes, the program and its arguments.</summary>
public sealed record ChildProcessSpec(string Name, string FileName, IReadOnlyList<string> Arguments)
{
    public IReadOnlyDictionary<string, string>? Environment { get; init; }
    public string? WorkingDirectory { get; init; }

    /// <summary>
    /// Start the child in its own session (via setsid), so a Ctrl+C in the terminal reaches only the supervisor,
    /// which then stops the children in its own order instead of all of them racing at once.
    /// </summary>
    public bool OwnSession { get; init; }
}
