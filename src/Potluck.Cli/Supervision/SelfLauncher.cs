using System.Reflection;

namespace Potluck.Cli.Supervision;

/// <summary>
/// Builds a command line that runs this same potluck build again: the apphost directly, or
/// `dotnet potluck.dll` when this process was itself started through the dotnet host.
/// </summary>
public static class SelfLauncher
{
    public static ChildProcessSpec Spec(string name, IEnumerable<string> potluckArguments)
    {
        var processPath = Environment.ProcessPath
            ?? throw new CliFailureException("cannot find this executable's path to start child processes");
        var entryAssembly = Assembly.GetEntryAssembly()?.Location;
        var arguments = new List<string>();
        var hostName = Path.GetFileNameWithoutExtension(processPath);
        if (string.Equals(hostName, "dotnet", StringComparison.OrdinalIgnoreCase))
        {
            if (string.IsNullOrEmpty(entryAssembly))
                throw new CliFailureException("running under the dotnet host but the entry assembly has no path");
            arguments.Add(entryAssembly);
        }
        arguments.AddRange(potluckArguments);
        return new ChildProcessSpec(name, processPath, arguments);
    }
}
