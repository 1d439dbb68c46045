using System.Runtime.InteropServices;

namespace Potluck.Cli.Supervision;

/// <summary>The few libc calls .NET's Process class lacks: a polite SIGTERM and the parent pid.</summary>
internal static partial class PosixProcess
{
    private const int SigTerm = 15;
    private const int SigInt = 2;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "getppid")]
    private static partial int GetParentPid();

    /// <summary>Asks a process to shut down; false when it is already gone.</summary>
    public static bool Terminate(int pid) => OperatingSystem.IsWindows() ? false : Kill(pid, SigTerm) == 0;

    public static bool Interrupt(int pid) => OperatingSystem.IsWindows() ? false : Kill(pid, SigInt) == 0;

    /// <summary>The pid of this process's parent; after the parent dies the child is re-parented and this changes.</summary>
    public static int ParentPid => OperatingSystem.IsWindows() ? -1 : GetParentPid();
}
