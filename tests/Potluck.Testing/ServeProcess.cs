using Xunit.Abstractions;

namespace Potluck.Testing;

/// <summary>
/// `potluck serve` as users run it (a gateway and node children), started on a free port and ready once it printed
/// "Pool ready:". Disposing sends SIGTERM so serve stops its children, and kills the tree only if it hangs.
/// </summary>
public sealed class ServeProcess : ChildProcess
{
    private ServeProcess(string potluckHome, int port, IEnumerable<string> arguments, ITestOutputHelper? output,
        IReadOnlyDictionary<string, string>? environment)
        : base(PotluckProcess.StartInfo(["serve", "--port", $"{port}", .. arguments], potluckHome, environment), "potluck serve", output)
    {
        Url = new Uri($"http://127.0.0.1:{port}/");
        StopGrace = PotluckProcess.StopGrace;
    }

    public Uri Url { get; }

    /// <param name="environment">Extra environment for serve and the children it starts (Potluck__… settings).</param>
    public static async Task<ServeProcess> StartAsync(string potluckHome, IEnumerable<string> arguments, TimeSpan readyLimit,
        ITestOutputHelper? output = null, IReadOnlyDictionary<string, string>? environment = null)
    {
        var serve = new ServeProcess(potluckHome, Ports.Free(), arguments, output, environment);
        try
        {
            await serve.WaitForOutputAsync("Pool ready:", readyLimit);
            return serve;
        }
        catch
        {
            await serve.DisposeAsync();
            throw;
        }
    }

    /// <summary>The pid the pool table printed for a process name ("│ node-1  │ 1234 │ ...").</summary>
    public int PidOf(string name)
    {
        foreach (var line in Lines)
        {
            var cells = line.Split('│', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            if (cells.Length >= 2 && cells[0] == name && int.TryParse(cells[1], out var pid)) return pid;
        }
        throw new InvalidOperationException($"no pid for {name} in\n{Output}");
    }

    /// <summary>Direct children of serve, read from /proc (the truth, not what serve claims).</summary>
    public List<int> ChildPids()
    {
        var children = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (int.Parse(fields[1]) == ProcessId && fields[0] != "Z") children.Add(pid);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
            {
                // The process went away while we looked.
            }
        }
        return children;
    }
}
