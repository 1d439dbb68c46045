using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Potluck.Inference;
using Potluck.Node.Telemetry;
using Potluck.Cluster;

namespace Potluck.Node.Compute;

/// <summary>What the span holds right now, read together: a status never pairs one session count with another's KV.</summary>
public readonly record struct SpanCounters(int OpenSessions, long FreeKvTokens);

/// <summary>
/// The sessions this stage holds: opening (with its KV reservation), resuming, closing, and freeing sessions whose
/// stream broke and were never resumed. Changes run one at a time and reach the engine through the
/// <see cref="ComputeLoop"/>; reads (the session table and <see cref="Counters"/>) never wait for the engine, so a status
/// or health probe answers while a long forward runs.
/// </summary>
internal sealed class SessionRegistry : IDisposable
{
    private readonly ComputeLoop _loop;
    private readonly NodeTelemetry _telemetry;
    private readonly ILogger _log;
    private readonly ConcurrentDictionary<string, StageSession> _sessions = new(StringComparer.Ordinal);
    // Serializes changes (table, engine reservation, counters); held while waiting for the compute lock.
    private readonly Lock _changeGate = new();
    // Guards only the counters, never held across an engine call.
    private readonly Lock _countersGate = new();
    private readonly Timer _detachedSweep;
    private SpanCounters _counters;
    private volatile bool _draining;

    public SessionRegistry(ComputeLoop loop, long initialFreeKvTokens, OutputLogBudget outputLogs, NodeTelemetry telemetry, ILogger log)
    {
        _loop = loop;
        _telemetry = telemetry;
        _log = log;
        OutputLogs = outputLogs;
        _counters = new SpanCounters(0, initialFreeKvTokens);
        _loop.FreeKvChanged = PublishFreeKv;
        _detachedSweep = new Timer(_ => CloseExpiredDetached(), null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
    }

    public OutputLogBudget OutputLogs { get; }
    public TimeSpan DetachedTimeout { get; set; } = TimeSpan.FromSeconds(30);

    public SpanCounters Counters
    {
        get { lock (_countersGate) return _counters; }
    }

    public bool Draining
    {
        get => _draining;
        set => _draining = value;
    }

    public IReadOnlyCollection<string> SessionIds => (IReadOnlyCollection<string>)_sessions.Keys;
    public ICollection<StageSession> Sessions => _sessions.Values;

    public bool TryGet(string sessionId, out StageSession session) => _sessions.TryGetValue(sessionId, out session!);

    /// <summary>Positions the session holds, as of its last step or rewind; never waits for a running forward.</summary>
    public int SessionLength(string sessionId) =>
        _sessions.TryGetValue(sessionId, out var session) ? session.Length : throw new UnknownSessionException(sessionId);

    private void PublishFreeKv(long free)
    {
        lock (_countersGate) _counters = _counters with { FreeKvTokens = free };
    }

    public StageSession Open(string sessionId, int maxTokens)
    {
        ThrowIfDraining();
        lock (_changeGate)
        {
            if (_sessions.TryGetValue(sessionId, out var existing)) return existing;
            return OpenLocked(sessionId, maxTokens);
        }
    }

    private StageSession OpenLocked(string sessionId, int maxTokens)
    {
        var (length, free) = _loop.OpenSession(sessionId, maxTokens);
        var log = _loop.IsFinal ? null : new StageOutputLog(OutputLogs, maxTokens);
        var session = new StageSession(_loop, sessionId, maxTokens, log);
        session.PublishLength(length);
        lock (_countersGate)
        {
            _sessions[sessionId] = session;
            _counters = new SpanCounters(_counters.OpenSessions + 1, free);
        }
        _telemetry.SessionsOpen.Add(1);
        return session;
    }

    public StageSession Resume(string sessionId, int maxTokens, int resumeLength, out int length)
    {
        StageSession? stale = null;
        lock (_changeGate)
        {
            if (_sessions.TryGetValue(sessionId, out var existing))
            {
                if (existing.MaxTokens == maxTokens && !existing.IsClosed && _loop.TryRewind(existing, resumeLength))
                {
                    length = resumeLength;
                    return existing;
                }
                // Holds less than every stage applied (or another size): nothing to keep.
                stale = RemoveLocked(sessionId);
            }
        }
        if (stale is not null)
        {
            _telemetry.SessionsOpen.Add(-1);
            stale.MarkClosed(cancelled: true);
        }
        ThrowIfDraining();
        lock (_changeGate)
        {
            length = 0;
            return _sessions.TryGetValue(sessionId, out var raced) ? raced : OpenLocked(sessionId, maxTokens);
        }
    }

    public bool Close(string sessionId, bool cancelled)
    {
        StageSession? session;
        lock (_changeGate)
        {
            session = RemoveLocked(sessionId);
            if (session is null) return false;
        }
        _telemetry.SessionsOpen.Add(-1);
        session.MarkClosed(cancelled);
        return true;
    }

    private StageSession? RemoveLocked(string sessionId)
    {
        if (!_sessions.TryGetValue(sessionId, out var session)) return null;
        var free = _loop.CloseSession(sessionId);
        lock (_countersGate)
        {
            _sessions.TryRemove(sessionId, out _);
            _counters = new SpanCounters(_counters.OpenSessions - 1, free);
        }
        return session;
    }

    /// <summary>Stops accepting sessions and closes every open one.</summary>
    public int CloseAll(bool cancelled)
    {
        Draining = true;
        var closed = 0;
        foreach (var id in _sessions.Keys)
            if (Close(id, cancelled)) closed++;
        return closed;
    }

    private void ThrowIfDraining()
    {
        if (Draining) throw new NodeDrainingException();
    }

    public int CountDetached()
    {
        var count = 0;
        foreach (var session in _sessions.Values) if (session.DetachedSinceTicks is not null) count++;
        return count;
    }

    private void CloseExpiredDetached()
    {
        var now = Environment.TickCount64;
        foreach (var session in _sessions.Values)
        {
            if (session.DetachedSinceTicks is { } since && now - since >= DetachedTimeout.TotalMilliseconds && Close(session.Id, cancelled: true))
                _log.LogInformation("Freed session {Session} on layers {Layers}: no resume within {Seconds:F0} s of its stream breaking",
                    session.Id, LayerRange.Format(_loop.LayerStart, _loop.LayerEnd), DetachedTimeout.TotalSeconds);
        }
    }

    public void Dispose() => _detachedSweep.Dispose();
}
