namespace Potluck.Cli.Supervision;

/// <summary>One child to start: a display name for log prefixes, the program and its arguments.</summary>
public sealed record ChildProcessSpec(string Name, string FileName, IReadOnlyList<string> Arguments)
{
    public IReadOnlyDictionary<string, string>? Environment { get; init; }
    public string? WorkingDirectory { get; init; }
}
