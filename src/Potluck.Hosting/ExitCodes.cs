namespace Potluck.Hosting;

/// <summary>
/// The one exit-code table of every potluck process (the CLI, the node and gateway hosts, the test host).
/// docs/cli.md documents it; a supervisor can tell "fix the configuration" (2, 3) from "retry later" (4).
/// </summary>
public static class ExitCodes
{
    public const int Ok = 0;

    /// <summary>A runtime failure: a port in use, a server error, a child that died.</summary>
    public const int Failure = 1;

    /// <summary>The command line or configuration is wrong (unknown option, bad value, impossible combination).</summary>
    public const int Usage = 2;

    /// <summary>The model or the span cannot be loaded: missing or corrupt file, layers outside it, another pool's model.</summary>
    public const int CannotLoad = 3;

    /// <summary>The pool cannot be joined: seed silo, Redis or the gateway's URL unreachable, or no answer in time.</summary>
    public const int CannotJoin = 4;

    /// <summary>128 + SIGINT, what shells expect when a command is interrupted.</summary>
    public const int Interrupted = 130;

    /// <summary>What a code means, as docs/cli.md says it.</summary>
    public static string Describe(int code) => code switch
    {
        Ok => "ok",
        Failure => "runtime failure",
        Usage => "usage error",
        CannotLoad => "cannot load the model or span",
        CannotJoin => "cannot join the pool",
        Interrupted => "interrupted",
        _ => $"exit code {code}",
    };
}

/// <summary>
/// A host or command failure whose message is the one line the user should see, and whose exit code says which
/// row of <see cref="ExitCodes"/> it is. The CLI prints the message and exits with the code.
/// </summary>
public class HostExitException(int exitCode, string message, Exception? inner = null) : Exception(message, inner)
{
    public int ExitCode { get; } = exitCode;
}

/// <summary>Configuration (flags, environment, files) that is missing a value or holds one that does not parse: exit 2.</summary>
public class ConfigurationUsageException(string message) : HostExitException(ExitCodes.Usage, message);

/// <summary>The model file or the span cannot be loaded: exit 3.</summary>
public sealed class CannotLoadException(string message, Exception? inner = null) : HostExitException(ExitCodes.CannotLoad, message, inner);

/// <summary>The pool cannot be joined: exit 4.</summary>
public sealed class CannotJoinException(string message, Exception? inner = null) : HostExitException(ExitCodes.CannotJoin, message, inner);
