using System.Diagnostics;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Potluck.Cluster;
using Potluck.Protocol.Diagnostics;
using Potluck.Gateway.Head;
using Potluck.Gateway.Routing;
using Potluck.Gateway.Sessions;
using Potluck.Gateway.Telemetry;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Streaming;

/// <summary>
/// One request's generation: opens a route (a <see cref="ResilientRoute"/>, which also fails over), prefills the
/// prompt, then samples token by token with the head in this process and the layers on the nodes, and records the
/// session in its grain. Not thread-safe; one consumer.
/// </summary>
public sealed class GenerationRun : IAsyncDisposable
{
    private const int AppendBatch = 32;

    private readonly GenerationService _service;
    private readonly GenerationRequest _request;
    private readonly ISessionGrain _grain;
    private readonly ResilientRoute _route;
    private readonly Sampler _sampler;
    private readonly StreamingDecoder _decoder;
    private readonly StopSequenceMatcher _stops;
    private readonly float[] _logits;
    // This generation's row and logits for the batched head (its logits are _logits).
    private readonly LogitsRequest _head;
    // Dense logit_bias (vocabulary-sized) for the logprobs, which llama.cpp's sampler does not report; null without bias.
    private readonly float[]? _bias;
    private readonly List<int> _unrecorded = new(AppendBatch);
    // Cumulative output chars after each generated token: maps a stop offset back to a KV length.
    private readonly List<int> _textEnds = [];
    private int _textLength;
    // Output chars handed to the consumer so far: the logprobs of tokens wholly inside it are safe to show.
    private int _emittedLength;
    private int _covered;
    private bool _released;
    private long _startedTimestamp;

    internal GenerationRun(GenerationService service, GenerationRequest request, string sessionId, ISessionGrain grain)
    {
        _service = service;
        _request = request;
        SessionId = sessionId;
        _grain = grain;
        var model = service.Model;
        // First: a grammar llama.cpp refuses throws here, before anything else is held.
        _sampler = new Sampler(request.Sampling, model.Tokenizer);
        _route = new ResilientRoute(service, sessionId, grain, request.PromptTokens.Length + request.MaxTokens, request.MaxTokens + 1);
        _decoder = model.Tokenizer.CreateStreamingDecoder(request.RenderSpecialTokens);
        _stops = new StopSequenceMatcher(request.Stop);
        _head = new LogitsRequest(model.Width, model.VocabSize);
        _logits = _head.Logits;
        if (request.TopLogprobs is { } top)
        {
            Logprobs = new TokenLogprobs(top);
            if (request.Sampling.LogitBias is { Count: > 0 } bias)
            {
                _bias = new float[model.VocabSize];
                foreach (var (token, value) in bias) _bias[token] = value;
            }
        }
    }

    public string SessionId { get; }

    /// <summary>When the admission queue gave this generation its slot (Stopwatch ticks): the slot's hold time is measured from here.</summary>
    internal long AdmittedTimestamp { get; init; }
    public int PromptTokens => _request.PromptTokens.Length;
    public int CompletionTokens { get; private set; }
    public FinishReason? Finish { get; private set; }
    /// <summary>The stop sequence that ended the generation, if one did (Anthropic's stop_sequence).</summary>
    public string? StopSequence => _stops.MatchedStop;
    public RoutePlan? Route => _route.Plan;
    public int Reroutes => _route.Reroutes;

    /// <summary>Per-token logprobs when the request asked for them (GenerationRequest.TopLogprobs), else null.</summary>
    public TokenLogprobs? Logprobs { get; }

    /// <summary>
    /// How many <see cref="Logprobs"/> entries belong to text already yielded by <see cref="RunAsync"/>: a token whose
    /// text is still held back (it may start a stop sequence) is not counted yet, and one cut by a stop never is.
    /// </summary>
    public int LogprobsCovered
    {
        get
        {
            if (Logprobs is not { } logprobs) return 0;
            // Entry i is generated token i (only a final end-of-generation token has no entry).
            while (_covered < logprobs.Count && _textEnds[_covered] <= _emittedLength) _covered++;
            return _covered;
        }
    }

    /// <summary>Plans and opens the route and prefills the prompt; errors here are still plain HTTP errors.</summary>
    public async Task PrepareAsync(CancellationToken ct)
    {
        _startedTimestamp = Stopwatch.GetTimestamp();
        await _grain.Begin(new SessionStart(_service.Model.Name, _request.Endpoint, _request.PromptTokens, _request.MaxTokens,
            _request.Sampling.Temperature, _request.Sampling.TopP, _request.Sampling.TopK, _request.Sampling.MinP,
            _request.Sampling.PresencePenalty, _request.Sampling.FrequencyPenalty, _request.Sampling.Seed, _request.User, DateTime.UtcNow));
        await EvaluateAsync(_request.PromptTokens, ct);
        _service.Telemetry.PromptTokens.Add(_request.PromptTokens.Length);
    }

    /// <summary>Generates until a stop condition; yields text pieces as they become safe to show.</summary>
    public async IAsyncEnumerable<string> RunAsync([EnumeratorCancellation] CancellationToken ct)
    {
        var tokenizer = _service.Model.Tokenizer;
        var telemetry = _service.Telemetry;
        var last = Stopwatch.GetTimestamp();
        int[] one = [0];
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            var token = _sampler.SampleAndAccept(_logits);
            StepTimeline.Mark(StepEvent.GatewaySampled, 0);
            Logprobs?.Record(_logits, _bias, token, _textLength);
            CompletionTokens++;
            _unrecorded.Add(token);
            var now = Stopwatch.GetTimestamp();
            if (CompletionTokens == 1) telemetry.TimeToFirstTokenMs.Record(Stopwatch.GetElapsedTime(_startedTimestamp, now).TotalMilliseconds);
            else telemetry.InterTokenMs.Record(Stopwatch.GetElapsedTime(last, now).TotalMilliseconds);
            last = now;
            telemetry.CompletionTokens.Add(1);

            if (!_request.IgnoreEos && tokenizer.IsEndOfGeneration(token))
            {
                _textEnds.Add(_textLength);
                Logprobs?.RemoveLast();
                Finish = FinishReason.Stop;
                var rest = _stops.Flush();
                _emittedLength += rest.Length;
                if (rest.Length > 0) yield return rest;
                break;
            }
            // Byte tokens can decode to terminal controls (ESC, BACKSPACE...); clients never see them.
            var piece = ControlCharacters.Strip(_decoder.Add(token));
            _textLength += piece.Length;
            _textEnds.Add(_textLength);
            var visible = piece.Length == 0 ? piece : _stops.Add(piece);
            _emittedLength += visible.Length;
            if (visible.Length > 0) yield return visible;
            if (_stops.StopOffset is not null)
            {
                Finish = FinishReason.Stop;
                break;
            }
            if (CompletionTokens >= _request.MaxTokens)
            {
                Finish = FinishReason.Length;
                var rest = _stops.Flush();
                _emittedLength += rest.Length;
                if (rest.Length > 0) yield return rest;
                break;
            }
            if (_unrecorded.Count >= AppendBatch) await FlushTokensAsync();
            one[0] = token;
            await EvaluateAsync(one, ct);
        }
        await CompleteAsync(ct);
    }

    /// <summary>Feeds <paramref name="tokens"/> after everything fed so far and leaves the next token's logits in _logits.</summary>
    private async Task EvaluateAsync(int[] tokens, CancellationToken ct)
    {
        await _route.FeedAsync(tokens, ct);
        _route.LastRow.CopyTo(_head.Row);
        await _service.Model.Logits.ComputeAsync(_head);
        StepTimeline.Mark(StepEvent.GatewayLogitsDone, 0);
    }

    private async Task FlushTokensAsync()
    {
        if (_unrecorded.Count == 0) return;
        var batch = _unrecorded.ToArray();
        _unrecorded.Clear();
        await _grain.Append(batch);
    }

    /// <summary>Normal end: rewinds the KV past a stop sequence, closes the session on every stage, records the outcome.</summary>
    private async Task CompleteAsync(CancellationToken ct)
    {
        await FlushTokensAsync();
        if (_stops.StopOffset is { } stopAt && _route.State == RouteState.Open)
        {
            // Keep only tokens whose text ends before the stop sequence began.
            var kept = 0;
            while (kept < _textEnds.Count && _textEnds[kept] <= stopAt) kept++;
            await _route.RewindAsync(Math.Min(_route.Length, _request.PromptTokens.Length + kept), ct);
        }
        var kvLength = _route.Length;
        await _route.CloseAsync();
        await _grain.Finish("finished", Finish == FinishReason.Length ? "length" : "stop", kvLength);
    }

    public async ValueTask DisposeAsync()
    {
        if (_released) return;
        _released = true;
        try
        {
            if (await _route.DropAsync()) await _grain.Finish("cancelled", null, 0);
            else if (Finish is null) await _grain.Finish("failed", null, 0);
        }
        catch (Exception e)
        {
            _service.Log.LogDebug("Session {Session}: cleanup error: {Error}", SessionId, e.Message);
        }
        finally
        {
            _route.ReleaseLoad();
            _sampler.Dispose();
            _service.Release(this);
        }
    }
}
