namespace Potluck.Cli;

// Exit codes: Potluck.Hosting.ExitCodes, the one table every potluck process uses (docs/cli.md).

/// <summary>A command line that parsed but makes no sense (for example --nodes 3 --replicas 2): exit code 2.</summary>
public sealed class UsageException(string message) : HostExitException(ExitCodes.Usage, message);

/// <summary>A runtime failure whose message is already the one line the user should see: exit code 1.</summary>
public sealed class CliFailureException(string message, Exception? inner = null) : HostExitException(ExitCodes.Failure, message, inner);
