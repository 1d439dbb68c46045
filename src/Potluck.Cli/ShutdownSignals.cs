using System.Runtime.InteropServices;

namespace Potluck.Cli;

/// <summary>
/// Turns the first SIGINT/SIGTERM into a cancellation the command can shut down on cleanly;
/// a second one runs <see cref="Forced"/> and lets the default action end the process.
/// </summary>
public sealed class ShutdownSignals : IDisposable
{
    private readonly CancellationTokenSource _shutdown = new();
    private readonly PosixSignalRegistration[] _registrations;
    private int _signalCount;

    public ShutdownSignals()
    {
        _registrations =
        [
            PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal),
            PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal),
        ];
    }

    public CancellationToken Token => _shutdown.Token;

    /// <summary>Which signal started the shutdown, if any.</summary>
    public PosixSignal? Received { get; private set; }

    /// <summary>
    /// True once any command of this process got SIGINT (Ctrl+C): the process then exits 130 even when the command
    /// stopped cleanly, as shells expect of an interrupted command (SIGTERM, a supervisor's stop, stays 0).
    /// </summary>
    public static bool InterruptReceived => Volatile.Read(ref s_interrupted) != 0;

    private static int s_interrupted;

    /// <summary>Runs on the second signal, just before the process is terminated.</summary>
    public Action? Forced { get; set; }

    private void OnSignal(PosixSignalContext context)
    {
        if (context.Signal == PosixSignal.SIGINT) Volatile.Write(ref s_interrupted, 1);
        if (Interlocked.Increment(ref _signalCount) == 1)
        {
            Received = context.Signal;
            context.Cancel = true;
            _shutdown.Cancel();
            return;
        }
        Forced?.Invoke();
    }

    public void Dispose()
    {
        foreach (var registration in _registrations) registration.Dispose();
        _shutdown.Dispose();
    }
}
