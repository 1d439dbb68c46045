using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Potluck.Hosting;

/// <summary>
/// Drops the Orleans watchdog's bogus first "Participant check thread has not completed for ..." warning.
/// Orleans' <c>Watchdog.Start()</c> starts its platform thread before it sets the component timestamp, so the first
/// check can measure from timestamp 0, i.e. the machine's uptime ("00:16:52" on a machine up 17 minutes), which
/// reads like a deadlock. Only that one report is dropped: the first of its event id per silo (one per node or
/// gateway process), and only when the duration it names is longer than this process has existed, which no real
/// stall can be. Every later report, and the watchdog itself, stay as they are.
/// </summary>
public static class WatchdogStartupReport
{
    /// <summary>Orleans' ErrorCode.SiloHeartbeatTimerStalled, the event id of both watchdog stall warnings.</summary>
    public const int StallEventId = (int)Orleans.ErrorCode.SiloHeartbeatTimerStalled;

    private const string ParticipantStallTemplate = "Participant check thread has not completed";

    /// <summary>The internal Orleans type whose ILogger is wrapped (its category is "Orleans.Runtime.Watchdog").</summary>
    internal static readonly Type? WatchdogType = Type.GetType("Orleans.Runtime.Watchdog, Orleans.Runtime");

    /// <summary>Registers ILogger&lt;Watchdog&gt; as the filtering logger (a closed registration wins over ILogger&lt;&gt;).</summary>
    public static void Register(IServiceCollection services)
    {
        // Renamed or moved in a later Orleans: nothing to filter, and the watchdog logs as it always did.
        if (WatchdogType is null) return;
        var loggerType = typeof(ILogger<>).MakeGenericType(WatchdogType);
        var filterType = typeof(FilteringLogger<>).MakeGenericType(WatchdogType);
        services.AddSingleton(loggerType, sp => Activator.CreateInstance(filterType, sp.GetRequiredService<ILoggerFactory>(), (Func<TimeSpan>)ProcessAge)!);
    }

    /// <summary>How long this process has been running.</summary>
    internal static TimeSpan ProcessAge()
    {
        using var process = Process.GetCurrentProcess();
        return DateTime.Now - process.StartTime;
    }

    /// <summary>True for the watchdog's participant-stall warning; <paramref name="duration"/> is the time it names.</summary>
    internal static bool IsParticipantStall<TState>(EventId eventId, TState state, out TimeSpan duration)
    {
        duration = default;
        if (eventId.Id != StallEventId || state is not IReadOnlyList<KeyValuePair<string, object?>> values) return false;
        string? template = null;
        foreach (var (key, value) in values)
        {
            if (key == "{OriginalFormat}") template = value as string;
            else if (value is TimeSpan span) duration = span;
        }
        return template is not null && template.StartsWith(ParticipantStallTemplate, StringComparison.Ordinal);
    }

    /// <summary>The watchdog's logger: everything passes but the one bogus startup report.</summary>
    internal sealed class FilteringLogger<T>(ILoggerFactory factory, Func<TimeSpan> processAge) : ILogger<T>
    {
        private readonly ILogger _inner = factory.CreateLogger<T>();
        private int _seen;

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => _inner.BeginScope(state);

        public bool IsEnabled(LogLevel logLevel) => _inner.IsEnabled(logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            // Only the first participant-stall report can be the bogus one, and only if it names more time than this process has lived.
            if (IsParticipantStall(eventId, state, out var duration) && Interlocked.Exchange(ref _seen, 1) == 0 && duration > processAge())
                return;
            _inner.Log(logLevel, eventId, state, exception, formatter);
        }
    }
}
