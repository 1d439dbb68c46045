using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Potluck.Gateway.Telemetry;

/// <summary>
/// One second (or whatever elapsed between two samples) of the gateway's own metrics, as the dashboard charts them.
/// </summary>
/// <param name="Seconds">How long the interval was (about one second; longer when the machine is busy).</param>
/// <param name="CompletionTokens">Completion tokens generated in the interval.</param>
/// <param name="TokensPerSecond">The same per second.</param>
/// <param name="TimeToFirstTokenMs">Mean time to first token of the requests whose first token came in the interval; null when none did.</param>
/// <param name="MaxTimeToFirstTokenMs">The slowest of those; null when none.</param>
/// <param name="Queued">Requests waiting for a generation slot at the end of the interval.</param>
/// <param name="Active">Generations running at the end of the interval.</param>
/// <param name="Requests">Completion requests that finished in the interval (any outcome).</param>
/// <param name="Errors">Of those, the ones that did not answer 200 (client and server errors).</param>
/// <param name="ServerErrors">Of the errors, 5xx answers and unexpected failures.</param>
/// <param name="Reroutes">Routes re-planned after a stage failed or refused.</param>
/// <param name="WaitP50Seconds">Median wait for a generation slot of the requests admitted in the interval; null when none was.</param>
/// <param name="WaitP95Seconds">The 95th percentile of the same; null when none.</param>
/// <param name="Rejections">Requests turned away in the interval because the pool was at capacity (queue full or wait timed out).</param>
public sealed record StatsSample(
    DateTime TimeUtc,
    double Seconds,
    long CompletionTokens,
    double TokensPerSecond,
    double? TimeToFirstTokenMs,
    double? MaxTimeToFirstTokenMs,
    long Queued,
    long Active,
    long Requests,
    long Errors,
    long ServerErrors,
    long Reroutes,
    double? WaitP50Seconds = null,
    double? WaitP95Seconds = null,
    long Rejections = 0);

/// <summary>A fixed-size ring of the latest samples, oldest first when read. Thread-safe.</summary>
public sealed class StatsRing(int capacity)
{
    private readonly StatsSample[] _items = new StatsSample[capacity > 0 ? capacity : throw new ArgumentOutOfRangeException(nameof(capacity))];
    private int _next;
    private int _count;

    public int Capacity => _items.Length;

    public void Add(StatsSample sample)
    {
        lock (_items)
        {
            _items[_next] = sample;
            _next = (_next + 1) % _items.Length;
            if (_count < _items.Length) _count++;
        }
    }

    /// <summary>The latest <paramref name="max"/> samples (all kept when larger), oldest first.</summary>
    public IReadOnlyList<StatsSample> Latest(int max)
    {
        lock (_items)
        {
            var n = Math.Clamp(max, 0, _count);
            var result = new StatsSample[n];
            var start = (_next - n + _items.Length) % _items.Length;
            for (var i = 0; i < n; i++) result[i] = _items[(start + i) % _items.Length];
            return result;
        }
    }
}

/// <summary>
/// The dashboard's history of the gateway's own metrics: an in-process <see cref="MeterListener"/> on this gateway's
/// meter (<see cref="GatewayTelemetry"/>: completion tokens, requests by outcome, time to first token, reroutes,
/// admission waits and rejections, and the active-session and queue gauges) folded into one <see cref="StatsSample"/> per <see cref="Sample"/> call, kept
/// in a ring of <see cref="Capacity"/> samples (ten minutes at one a second). Nothing here is exported; /metrics and
/// OTLP read the same instruments independently.
/// </summary>
public sealed class RecentStats : IDisposable
{
    /// <summary>Samples kept: ten minutes at the sampler's one a second.</summary>
    public const int Capacity = 600;

    private readonly Meter _meter;
    private readonly MeterListener _listener;
    private readonly StatsRing _ring = new(Capacity);
    private readonly Lock _gate = new();
    private long _tokens;
    private long _requests;
    private long _errors;
    private long _serverErrors;
    private long _reroutes;
    private long _rejections;
    // This interval's admission waits (seconds), sorted at the sample for its percentiles; reused.
    private readonly List<double> _waits = [];
    private double _ttftSum;
    private double _ttftMax;
    private long _ttftCount;
    private long _active;
    private long _queued;
    private long _lastTimestamp = Stopwatch.GetTimestamp();

    public RecentStats(GatewayTelemetry telemetry)
    {
        _meter = telemetry.Meter;
        _listener = new MeterListener
        {
            // Another gateway in the same process (tests) has its own meter of the same name: only this one counts.
            InstrumentPublished = (instrument, listener) =>
            {
                if (ReferenceEquals(instrument.Meter, _meter)) listener.EnableMeasurementEvents(instrument);
            },
        };
        _listener.SetMeasurementEventCallback<long>(OnLong);
        _listener.SetMeasurementEventCallback<double>(OnDouble);
        _listener.Start();
    }

    /// <summary>The latest samples, oldest first, at most <paramref name="max"/>.</summary>
    public IReadOnlyList<StatsSample> Latest(int max) => _ring.Latest(max);

    /// <summary>Closes the interval since the previous call into one sample, keeps it and returns it.</summary>
    public StatsSample Sample(DateTime nowUtc)
    {
        // The gauges report through the same callback (OnLong) when asked.
        _listener.RecordObservableInstruments();
        StatsSample sample;
        lock (_gate)
        {
            var now = Stopwatch.GetTimestamp();
            var seconds = Math.Max(Stopwatch.GetElapsedTime(_lastTimestamp, now).TotalSeconds, 1e-3);
            _lastTimestamp = now;
            _waits.Sort();
            sample = new StatsSample(nowUtc, seconds, _tokens, Math.Round(_tokens / seconds, 2),
                _ttftCount > 0 ? Math.Round(_ttftSum / _ttftCount, 2) : null, _ttftCount > 0 ? Math.Round(_ttftMax, 2) : null,
                _queued, _active, _requests, _errors, _serverErrors, _reroutes, Percentile(_waits, 0.50), Percentile(_waits, 0.95), _rejections);
            _tokens = _requests = _errors = _serverErrors = _reroutes = _rejections = _ttftCount = 0;
            _waits.Clear();
            _ttftSum = _ttftMax = 0;
        }
        _ring.Add(sample);
        return sample;
    }

    private void OnLong(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
    {
        switch (instrument.Name)
        {
            case "potluck.gateway.completion_tokens":
                lock (_gate) _tokens += value;
                break;
            case "potluck.gateway.reroutes":
                lock (_gate) _reroutes += value;
                break;
            case "potluck.gateway.admission_rejections":
                lock (_gate) _rejections += value;
                break;
            case "potluck.gateway.requests":
                var outcome = "";
                foreach (var tag in tags)
                    if (tag.Key == "outcome") outcome = tag.Value as string ?? "";
                // "200" is success, "error" an unexpected failure, other values HTTP statuses.
                var failed = outcome != "200";
                var server = failed && (outcome.Length == 0 || outcome[0] != '4');
                lock (_gate)
                {
                    _requests += value;
                    if (failed) _errors += value;
                    if (server) _serverErrors += value;
                }
                break;
            case "potluck.gateway.active_sessions":
                lock (_gate) _active = value;
                break;
            case "potluck.gateway.queued_requests":
                lock (_gate) _queued = value;
                break;
        }
    }

    /// <summary>The nearest-rank percentile of sorted values, to the millisecond; null when there are none.</summary>
    internal static double? Percentile(List<double> sorted, double fraction)
    {
        if (sorted.Count == 0) return null;
        var rank = Math.Clamp((int)Math.Ceiling(fraction * sorted.Count) - 1, 0, sorted.Count - 1);
        return Math.Round(sorted[rank], 3);
    }

    private void OnDouble(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
    {
        if (instrument.Name == "potluck.gateway.queue_wait")
        {
            lock (_gate) _waits.Add(value);
            return;
        }
        if (instrument.Name != "potluck.gateway.time_to_first_token") return;
        lock (_gate)
        {
            _ttftSum += value;
            _ttftCount++;
            if (value > _ttftMax) _ttftMax = value;
        }
    }

    public void Dispose() => _listener.Dispose();
}
