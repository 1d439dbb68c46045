using System.Diagnostics;
using System.Globalization;

namespace Potluck.Protocol.Diagnostics;

/// <summary>Points in one step's life, on the gateway and on each stage.</summary>
public enum StepEvent : byte
{
    GatewayEmbedStart = 1,
    GatewaySend = 2,
    GatewayReceived = 3,
    GatewayLogitsDone = 4,
    GatewaySampled = 5,
    StageReceived = 10,
    StageComputeStart = 11,
    StageComputeEnd = 12,
    StageResumed = 13,
    StagePushed = 14,
    StageResultWritten = 15,
    StageRelayReceived = 16,
    StageRelayWritten = 17,
}

/// <summary>
/// Opt-in per-step timestamps for finding where a token's time goes across processes
/// (<c>POTLUCK_STEP_TIMELINE=folder</c>). Stopwatch ticks are CLOCK_MONOTONIC on Linux, so stamps from the
/// gateway and every node on one machine line up. Records go into preallocated arrays (no per-token allocation)
/// and are written to <c>folder/role-pid.tsv</c> at process exit. Off by default; then each mark is one branch.
/// </summary>
public static class StepTimeline
{
    private const int Capacity = 1 << 20;
    private static readonly string? Folder = Environment.GetEnvironmentVariable("POTLUCK_STEP_TIMELINE") is { Length: > 0 } f ? f : null;
    public static readonly bool Enabled = Folder is not null;
    private static readonly long[] Stamps = Enabled ? new long[Capacity] : [];
    private static readonly ulong[] Steps = Enabled ? new ulong[Capacity] : [];
    private static readonly StepEvent[] Events = Enabled ? new StepEvent[Capacity] : [];
    private static int _count;
    private static string _role = "process";
    private static int _hooked;

    /// <summary>Names this process in the output file (gateway, node id) and writes the file at exit.</summary>
    public static void Start(string role)
    {
        if (!Enabled) return;
        _role = role;
        if (Interlocked.Exchange(ref _hooked, 1) == 0) AppDomain.CurrentDomain.ProcessExit += (_, _) => Flush();
    }

    public static void Mark(StepEvent stepEvent, ulong stepId)
    {
        if (!Enabled) return;
        var at = Stopwatch.GetTimestamp();
        var i = Interlocked.Increment(ref _count) - 1;
        if (i >= Capacity) return;
        Stamps[i] = at;
        Steps[i] = stepId;
        Events[i] = stepEvent;
    }

    /// <summary>Writes what was recorded so far (tab separated: ticks, event, step id); also called at exit.</summary>
    public static void Flush()
    {
        if (!Enabled) return;
        Directory.CreateDirectory(Folder!);
        var count = Math.Min(Volatile.Read(ref _count), Capacity);
        using var writer = new StreamWriter(Path.Combine(Folder!, $"{_role}-{Environment.ProcessId}.tsv"));
        writer.WriteLine($"# ticks_per_second\t{Stopwatch.Frequency}");
        for (var i = 0; i < count; i++)
            writer.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{Stamps[i]}\t{Events[i]}\t{Steps[i]}"));
    }
}
