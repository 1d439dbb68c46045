namespace Potluck.Cli;

/// <summary>The process exit codes every potluck command uses.</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    public const int Failure = 1;
    public const int Usage = 2;
    /// <summary>128 + SIGINT, what shells expect when a command is interrupted.</summary>
    public const int Interrupted = 130;
}

/// <summary>A command line that parsed but makes no sense (for example --nodes 3 --replicas 2): exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>A runtime failure whose message is already the one line the user should see: exit code 1.</summary>
public sealed class CliFailureException(string message, Exception? inner = null) : Exception(message, inner);
