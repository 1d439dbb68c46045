using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Xunit.Abstractions;

namespace Potluck.Testing;

/// <summary>POSIX signals a test sends to a child (Linux numbers; the tests run on Linux only).</summary>
public enum ProcessSignal
{
    Interrupt = 2,
    Kill = 9,
    Terminate = 15,
    Continue = 18,
    Stop = 19,
}

/// <summary>How a child that ran to completion ended: its exit code and what it printed.</summary>
/// <param name="Output">Both streams, line by line in the order they arrived.</param>
public sealed record ProcessResult(int ExitCode, string StandardOutput, string StandardError, string Output)
{
    public string Tail(int chars = 4000) => Output.Length <= chars ? Output.Trim() : "..." + Output[^chars..].Trim();
}

/// <summary>
/// A child process of a test: stdout and stderr are read as they come (the pipes never fill), kept for assertions
/// (the exact text and line by line) and mirrored to the xUnit output as "[name] line" ("[name!]" for stderr).
/// Every wait has a timeout and fails with the output so far; disposing stops the child (SIGTERM first when
/// <see cref="StopGrace"/> is set) and then kills its whole process tree; children a test forgot are killed when
/// the test process exits.
/// </summary>
public class ChildProcess : IAsyncDisposable, IDisposable
{
    private static readonly TimeSpan ExitWait = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(50);
    private static readonly ConcurrentDictionary<ChildProcess, byte> Live = new();

    private readonly Process _process;
    private readonly ITestOutputHelper? _output;
    private readonly object _gate = new();
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly List<string> _stdoutLines = [];
    private readonly List<string> _stderrLines = [];
    private readonly List<string> _lines = [];
    private readonly Task _pumps;
    private int _disposed;

    static ChildProcess()
    {
        // The last line of defence: a test run that ends (or is aborted) never leaves node processes behind.
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var child in Live.Keys) child.KillTree();
        };
    }

    /// <param name="standardInput">Written to the child's stdin, which is then closed; null leaves stdin open and empty.</param>
    protected ChildProcess(ProcessStartInfo info, string name, ITestOutputHelper? output, string? standardInput = null)
    {
        info.UseShellExecute = false;
        info.RedirectStandardOutput = true;
        info.RedirectStandardError = true;
        info.RedirectStandardInput = true;
        Name = name;
        _output = output;
        _process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {info.FileName}");
        Live.TryAdd(this, 0);
        _pumps = Task.WhenAll(
            Task.Run(() => PumpAsync(_process.StandardOutput, _stdout, _stdoutLines, isError: false)),
            Task.Run(() => PumpAsync(_process.StandardError, _stderr, _stderrLines, isError: true)));
        if (standardInput is null) return;
        try
        {
            _process.StandardInput.Write(standardInput);
            _process.StandardInput.Close();
        }
        catch (IOException)
        {
            // The child exited without reading its input; its exit code tells the test why.
        }
    }

    /// <summary>Starts <paramref name="info"/> (its streams are redirected here, whatever it says).</summary>
    public static ChildProcess Start(ProcessStartInfo info, string? name = null, ITestOutputHelper? output = null, string? standardInput = null) =>
        new(info, name ?? CommandLine(info), output, standardInput);

    public static ChildProcess Start(string fileName, IEnumerable<string> arguments, ITestOutputHelper? output = null,
        IReadOnlyDictionary<string, string>? environment = null, string? workingDirectory = null, string? name = null) =>
        Start(StartInfo(fileName, arguments, environment, workingDirectory), name, output);

    /// <summary>Runs a child to its end; past <paramref name="timeout"/> its process tree is killed and this throws.</summary>
    public static async Task<ProcessResult> RunAsync(ProcessStartInfo info, TimeSpan timeout, string standardInput = "",
        ITestOutputHelper? output = null, string? name = null)
    {
        await using var child = Start(info, name, output, standardInput);
        var exitCode = await child.WaitForExitAsync(timeout).ConfigureAwait(false);
        return new ProcessResult(exitCode, child.StandardOutput, child.StandardError, child.Output);
    }

    public static ProcessStartInfo StartInfo(string fileName, IEnumerable<string> arguments,
        IReadOnlyDictionary<string, string>? environment = null, string? workingDirectory = null)
    {
        var info = new ProcessStartInfo(fileName);
        foreach (var argument in arguments) info.ArgumentList.Add(argument);
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) info.Environment[key] = value;
        if (workingDirectory is not null) info.WorkingDirectory = workingDirectory;
        return info;
    }

    public string Name { get; }
    public int ProcessId => _process.Id;
    public bool HasExited => _process.HasExited;

    /// <summary>The exit code; throws while the child runs.</summary>
    public int ExitCode => _process.ExitCode;

    /// <summary>How long <see cref="DisposeAsync"/> waits after SIGTERM before it kills; zero kills at once.</summary>
    public TimeSpan StopGrace { get; set; }

    public string StandardOutput { get { lock (_gate) return _stdout.ToString(); } }
    public string StandardError { get { lock (_gate) return _stderr.ToString(); } }

    /// <summary>Every line of both streams, in the order they arrived.</summary>
    public string Output { get { lock (_gate) return string.Join('\n', _lines); } }

    public IReadOnlyList<string> StandardOutputLines { get { lock (_gate) return _stdoutLines.ToArray(); } }
    public IReadOnlyList<string> StandardErrorLines { get { lock (_gate) return _stderrLines.ToArray(); } }
    public IReadOnlyList<string> Lines { get { lock (_gate) return _lines.ToArray(); } }

    /// <summary>The first line containing <paramref name="fragment"/>, once printed; fails if the child exits first.</summary>
    public async Task<string> WaitForOutputAsync(string fragment, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var exited = _process.HasExited;
            if (exited) await FlushAsync().ConfigureAwait(false);
            if (Lines.FirstOrDefault(line => line.Contains(fragment, StringComparison.Ordinal)) is { } found) return found;
            if (exited) throw new InvalidOperationException($"{Name} exited ({_process.ExitCode}) before '{fragment}'\n{Output}");
            if (clock.Elapsed > timeout) throw new TimeoutException($"no '{fragment}' from {Name} within {timeout.TotalSeconds:0} s\n{Output}");
            await Task.Delay(PollInterval).ConfigureAwait(false);
        }
    }

    /// <summary>Polls <paramref name="condition"/> until it holds; fails if the child exits first or time runs out.</summary>
    public async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (_process.HasExited)
            {
                await FlushAsync().ConfigureAwait(false);
                throw new InvalidOperationException($"{Name} exited ({_process.ExitCode}) before {what}\n{Output}");
            }
            if (await condition().ConfigureAwait(false)) return;
            if (clock.Elapsed > timeout) throw new TimeoutException($"{Name}: {what} not within {timeout.TotalSeconds:0} s\n{Output}");
            await Task.Delay(PollInterval * 4).ConfigureAwait(false);
        }
    }

    /// <summary>Waits until something accepts TCP connections on the loopback <paramref name="port"/>.</summary>
    public Task WaitForPortAsync(int port, TimeSpan timeout) => WaitUntilAsync(async () =>
    {
        using var client = new TcpClient();
        using var attempt = new CancellationTokenSource(TimeSpan.FromSeconds(1));
        try
        {
            await client.ConnectAsync(IPAddress.Loopback, port, attempt.Token).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException)
        {
            return false;
        }
    }, timeout, $"port {port} accepting connections");

    /// <summary>Waits for the child to exit on its own (and for its output to be read); returns its exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using (var limit = new CancellationTokenSource(timeout))
        {
            try
            {
                await _process.WaitForExitAsync(limit.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                KillTree();
                throw new TimeoutException($"{Name} still running after {timeout.TotalSeconds:0} s (killed); output so far:\n{Output}");
            }
        }
        await FlushAsync().ConfigureAwait(false);
        return _process.ExitCode;
    }

    public void Signal(ProcessSignal signal) => Signal(ProcessId, signal);

    /// <summary>Sends <paramref name="signal"/> to any process (e.g. a grandchild whose pid a test read).</summary>
    public static void Signal(int processId, ProcessSignal signal)
    {
        if (SendSignal(processId, (int)signal) != 0)
            throw new InvalidOperationException($"kill -{(int)signal} {processId} failed (errno {Marshal.GetLastPInvokeError()})");
    }

    /// <summary>SIGKILL to the child alone (a crash: no graceful shutdown), then waits until it is gone.</summary>
    public void Kill()
    {
        _process.Kill();
        if (!_process.WaitForExit(ExitWait)) throw new TimeoutException($"{Name} did not die after SIGKILL");
    }

    /// <summary>
    /// Sends <paramref name="signal"/> and waits up to <paramref name="grace"/> for the child to exit; then kills
    /// its process tree. Returns the exit code.
    /// </summary>
    public async Task<int> StopAsync(TimeSpan grace, ProcessSignal signal = ProcessSignal.Terminate)
    {
        if (!_process.HasExited)
        {
            try
            {
                Signal(signal);
                using var limit = new CancellationTokenSource(grace);
                await _process.WaitForExitAsync(limit.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or InvalidOperationException)
            {
                // Ignored the signal for the whole grace period, or exited just before it was sent.
            }
            KillTree();
        }
        await FlushAsync().ConfigureAwait(false);
        return _process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        try
        {
            if (StopGrace > TimeSpan.Zero) await StopAsync(StopGrace).ConfigureAwait(false);
            else KillTree();
            await FlushAsync().ConfigureAwait(false);
        }
        finally
        {
            Release();
        }
        GC.SuppressFinalize(this);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        try
        {
            if (StopGrace > TimeSpan.Zero && !_process.HasExited)
            {
                try
                {
                    Signal(ProcessSignal.Terminate);
                    _process.WaitForExit(StopGrace);
                }
                catch (InvalidOperationException)
                {
                    // Exited just before the signal.
                }
            }
            KillTree();
            FlushAsync().Wait();
        }
        finally
        {
            Release();
        }
        GC.SuppressFinalize(this);
    }

    // Output already read stays readable after disposal.
    private void Release()
    {
        Live.TryRemove(this, out _);
        _process.Dispose();
    }

    private void KillTree()
    {
        try
        {
            if (_process.HasExited) return;
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit(ExitWait);
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // Gone already, or disposed while the test process exits.
        }
    }

    /// <summary>Waits (briefly) until both pipes reached their end, so the output is complete.</summary>
    private Task FlushAsync() => _pumps.WaitAsync(TimeSpan.FromSeconds(10)).ContinueWith(_ => { }, TaskScheduler.Default);

    private async Task PumpAsync(StreamReader reader, StringBuilder raw, List<string> lines, bool isError)
    {
        var buffer = new char[4096];
        var line = new StringBuilder();
        try
        {
            int read;
            while ((read = await reader.ReadAsync(buffer.AsMemory()).ConfigureAwait(false)) > 0)
            {
                lock (_gate) raw.Append(buffer, 0, read);
                for (var i = 0; i < read; i++)
                {
                    if (buffer[i] != '\n')
                    {
                        line.Append(buffer[i]);
                        continue;
                    }
                    Emit(line.ToString().TrimEnd('\r'), lines, isError);
                    line.Clear();
                }
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            // The pipe closed under us (disposal); what was read is kept.
        }
        if (line.Length > 0) Emit(line.ToString(), lines, isError);
    }

    private void Emit(string line, List<string> lines, bool isError)
    {
        lock (_gate)
        {
            lines.Add(line);
            _lines.Add(line);
        }
        if (_output is null) return;
        try
        {
            _output.WriteLine($"[{Name}{(isError ? "!" : "")}] {line}");
        }
        catch (InvalidOperationException)
        {
            // The test has finished while the child still writes.
        }
    }

    private static string CommandLine(ProcessStartInfo info) =>
        info.ArgumentList.Count > 0 ? $"{info.FileName} {string.Join(' ', info.ArgumentList)}"
        : info.Arguments.Length > 0 ? $"{info.FileName} {info.Arguments}"
        : info.FileName;

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SendSignal(int pid, int signal);
}
