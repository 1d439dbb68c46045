using System.Collections.Concurrent;
using Orleans.Concurrency;
using Potluck.Gateway.Streaming;

namespace Potluck.Gateway.Sessions;

/// <summary>One stage of a session's route as the session grain records it.</summary>
[GenerateSerializer, Immutable, Alias("potluck.gateway.RouteHopRecord")]
public sealed record RouteHopRecord(string NodeId, string Endpoint, int LayerStart, int LayerEnd);

/// <summary>What a session was asked to do (the sampling state is fully determined by these plus the tokens).</summary>
[GenerateSerializer, Immutable, Alias("potluck.gateway.SessionStart")]
public sealed record SessionStart(
    string Model,
    string Endpoint,
    int[] PromptTokens,
    int MaxTokens,
    float Temperature,
    float TopP,
    int TopK,
    float MinP,
    float PresencePenalty,
    float FrequencyPenalty,
    uint Seed,
    string? User,
    DateTime StartedUtc);

/// <summary>A session's control-plane record: request, route(s), tokens so far and how it ended.</summary>
[GenerateSerializer, Immutable, Alias("potluck.gateway.SessionSnapshot")]
public sealed record SessionSnapshot(
    string SessionId,
    SessionStart? Start,
    IReadOnlyList<RouteHopRecord> Route,
    int Reroutes,
    int[] GeneratedTokens,
    int KvLength,
    string State,
    string? FinishReason);

/// <summary>
/// One per request: holds the token history, sampling parameters (with the seed) and route. Control plane only:
/// hidden states never pass through it. Lives only on the gateway silo that runs the generation (a local activation,
/// see below), so calls are in-process.
/// </summary>
[Alias("potluck.gateway.ISessionGrain")]
public interface ISessionGrain : IGrainWithStringKey
{
    [Alias("Begin")]
    Task Begin(SessionStart start);

    [Alias("SetRoute")]
    Task SetRoute(IReadOnlyList<RouteHopRecord> route, bool reroute);

    /// <summary>Appends generated tokens (batched by the generator).</summary>
    [Alias("Append")]
    Task Append(int[] tokens);

    [Alias("Finish")]
    Task Finish(string state, string? finishReason, int kvLength);

    [Alias("Get")]
    Task<SessionSnapshot> Get();

    /// <summary>Stops the generation (if it runs in this gateway); true when one was running.</summary>
    [Alias("Cancel")]
    Task<bool> Cancel();
}

/// <summary>One generation running in this gateway: its cancellation and (when started by the generation service) the run itself.</summary>
public sealed record RunningSession(string Id, CancellationTokenSource Cancel, GenerationRun? Generation, DateTime StartedUtc);

/// <summary>Generations running in this gateway process, by session id, so a grain can cancel its own.</summary>
public sealed class RunningSessions
{
    private readonly ConcurrentDictionary<string, RunningSession> _running = new(StringComparer.Ordinal);

    public int Count => _running.Count;

    public void Add(string sessionId, CancellationTokenSource cancel, GenerationRun? generation = null) =>
        _running[sessionId] = new RunningSession(sessionId, cancel, generation, DateTime.UtcNow);

    /// <summary>The sessions running now (the dashboard's session list: route, tokens, age).</summary>
    public IReadOnlyList<RunningSession> Running => [.. _running.Values];

    public void Remove(string sessionId)
    {
        if (!_running.ContainsKey(sessionId)) return;
        // Known as finished before it stops being known as running, so a concurrent lookup never misses it.
        // Remembered while its grain stays inspectable, so /api/sessions/{id} can answer 404 for anything else
        // without activating a grain. Bounded: past the cap the oldest are forgotten (their grains may still answer).
        lock (_finished)
        {
            _finished.Enqueue((sessionId, DateTime.UtcNow + RecentlyFinishedFor));
            _finishedIds.Add(sessionId);
            while (_finished.Count > MaxRecentlyFinished) _finishedIds.Remove(_finished.Dequeue().Id);
        }
        _running.TryRemove(sessionId, out _);
    }

    /// <summary>How long a finished session's id stays known (its grain lingers as long, see SessionGrain).</summary>
    public static readonly TimeSpan RecentlyFinishedFor = TimeSpan.FromMinutes(2);
    public const int MaxRecentlyFinished = 16384;
    private readonly Queue<(string Id, DateTime Until)> _finished = new();
    private readonly HashSet<string> _finishedIds = new(StringComparer.Ordinal);

    /// <summary>True while the session runs in this gateway or finished here within <see cref="RecentlyFinishedFor"/>.</summary>
    public bool IsKnown(string sessionId)
    {
        if (_running.ContainsKey(sessionId)) return true;
        lock (_finished)
        {
            var now = DateTime.UtcNow;
            while (_finished.TryPeek(out var oldest) && oldest.Until < now) _finishedIds.Remove(_finished.Dequeue().Id);
            return _finishedIds.Contains(sessionId);
        }
    }

    public bool Cancel(string sessionId)
    {
        if (!_running.TryGetValue(sessionId, out var session)) return false;
        try
        {
            session.Cancel.Cancel();
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
        return true;
    }
}

// A local-only activation on the gateway that runs the generation, never registered in the grain directory: the
// directory is partitioned over every silo, and when a node silo was SIGKILLed the entries its partition held were
// lost, so live sessions were re-activated empty (seen in the churn test). Sessions are therefore inspected on the
// gateway that serves them. Idle-worker removal is off: it deactivates a worker after about 1.5 s without calls, which
// ignores DelayDeactivation and lost the record of a session between token batches or right after it finished.
[StatelessWorker(1, removeIdleWorkers: false)]
internal sealed class SessionGrain(RunningSessions running) : Grain, ISessionGrain
{
    // Finished sessions stay inspectable for a while, then the activation is collected.
    private static readonly TimeSpan KeepFinished = RunningSessions.RecentlyFinishedFor;
    private SessionStart? _start;
    private IReadOnlyList<RouteHopRecord> _route = [];
    private int _reroutes;
    private readonly List<int> _generated = [];
    private int _kvLength;
    private string _state = "new";
    private string? _finishReason;

    public Task Begin(SessionStart start)
    {
        _start = start;
        _state = "routing";
        _kvLength = 0;
        return Task.CompletedTask;
    }

    public Task SetRoute(IReadOnlyList<RouteHopRecord> route, bool reroute)
    {
        _route = route;
        if (reroute) _reroutes++;
        _state = "generating";
        return Task.CompletedTask;
    }

    public Task Append(int[] tokens)
    {
        _generated.AddRange(tokens);
        _kvLength = (_start?.PromptTokens.Length ?? 0) + _generated.Count;
        return Task.CompletedTask;
    }

    public Task Finish(string state, string? finishReason, int kvLength)
    {
        _state = state;
        _finishReason = finishReason;
        _kvLength = kvLength;
        DelayDeactivation(KeepFinished);
        return Task.CompletedTask;
    }

    public Task<SessionSnapshot> Get() =>
        Task.FromResult(new SessionSnapshot(this.GetPrimaryKeyString(), _start, _route, _reroutes, _generated.ToArray(), _kvLength, _state, _finishReason));

    public Task<bool> Cancel() => Task.FromResult(running.Cancel(this.GetPrimaryKeyString()));
}
