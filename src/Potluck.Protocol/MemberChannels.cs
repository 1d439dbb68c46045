using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Potluck.Security;

namespace Potluck.Protocol;

/// <summary>
/// The one cache of gRPC channels a member (gateway, node, test client) dials other members' data-plane ports with.
/// One <see cref="GrpcChannel"/> per (endpoint, expected node id), kept for reuse: every session hop to the same node
/// multiplexes over the same HTTP/2 connection(s), so a step never pays connection or TLS set-up.
/// <para>
/// Every connection is mutual TLS: it presents this member's current certificate (read on each handshake, so a
/// renewal takes effect for new connections) and accepts the peer only when <see cref="PoolTrust.ValidateMember"/>
/// trusts it and its certificate names the expected node id. The host name is not checked on purpose: identity is
/// the SAN URI, so a hop reached later through a tunnel or another address is checked the same way.
/// </para>
/// <para>
/// Bounded: at most <see cref="Capacity"/> channels; past it the least recently used idle one (no call in flight) is
/// disposed, so distinct endpoint strings cannot grow the cache without bound.
/// </para>
/// </summary>
public sealed partial class MemberChannels : IDisposable
{
    public const int DefaultCapacity = 256;

    private readonly Dictionary<Key, Entry> _entries = [];
    private readonly Lock _gate = new();
    private readonly RotatingCredential? _credential;
    private readonly PoolTrust? _trust;
    private readonly bool _plaintext;
    private readonly ILogger _log;
    private long _clock;
    private bool _disposed;

    /// <param name="credential">This member's certificate, presented on every connection.</param>
    /// <param name="trust">The pool trust peers are checked with.</param>
    /// <param name="maxMessageBytes">gRPC send and receive limit of every channel.</param>
    /// <param name="capacity">Most channels kept at once.</param>
    public MemberChannels(RotatingCredential credential, PoolTrust trust, int maxMessageBytes, int capacity = DefaultCapacity, ILogger? log = null)
        : this(credential, trust, maxMessageBytes, capacity, log, plaintext: false)
    {
    }

    private MemberChannels(RotatingCredential? credential, PoolTrust? trust, int maxMessageBytes, int capacity, ILogger? log, bool plaintext)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxMessageBytes, 1);
        if (!plaintext)
        {
            ArgumentNullException.ThrowIfNull(credential);
            ArgumentNullException.ThrowIfNull(trust);
        }
        _credential = credential;
        _trust = trust;
        _plaintext = plaintext;
        MaxMessageBytes = maxMessageBytes;
        Capacity = capacity;
        _log = log ?? NullLogger.Instance;
    }

    /// <summary>
    /// The hop benchmark's baseline only: the same channels over plaintext h2c, no certificates, no identity check
    /// (an https:// endpoint is dialled as http://). Internal so no host can build it; nodes always serve TLS.
    /// </summary>
    internal static MemberChannels PlaintextForBenchmark(int maxMessageBytes) => new(null, null, maxMessageBytes, DefaultCapacity, null, plaintext: true);

    /// <summary>The pool trust peers are checked with (null only in the benchmark's plaintext baseline).</summary>
    public PoolTrust? Trust => _trust;
    public int MaxMessageBytes { get; }
    public int Capacity { get; }

    /// <summary>Channels held now.</summary>
    public int Count
    {
        get { lock (_gate) return _entries.Count; }
    }

    /// <summary>Only absolute https endpoints without a path are dialled: members speak TLS only.</summary>
    public static bool IsValidEndpoint(string? endpoint) =>
        Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) && uri.Scheme == Uri.UriSchemeHttps &&
        string.IsNullOrEmpty(uri.PathAndQuery.Trim('/')) && string.IsNullOrEmpty(uri.UserInfo);

    /// <summary>
    /// The channel to the member <paramref name="expectedNodeId"/> at <paramref name="endpoint"/>; a connection to a
    /// peer whose certificate names another node (or is not a trusted member) fails its TLS handshake, and the call
    /// fails with Unavailable.
    /// </summary>
    /// <exception cref="ArgumentException">The endpoint is not an absolute https URL, or the node id is not valid.</exception>
    public GrpcChannel Get(string endpoint, string expectedNodeId)
    {
        if (!IsValidEndpoint(endpoint)) throw new ArgumentException($"'{endpoint}' is not a member endpoint (https://host:port)", nameof(endpoint));
        if (!PoolIdentity.IsValidId(expectedNodeId)) throw new ArgumentException($"'{expectedNodeId}' is not a valid node id: {PoolIdentity.IdRule}", nameof(expectedNodeId));
        var key = new Key(endpoint, expectedNodeId);
        Entry? evicted = null;
        Entry entry;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_entries.TryGetValue(key, out var found))
            {
                found.LastUsed = ++_clock;
                return found.Channel;
            }
            if (_entries.Count >= Capacity) evicted = EvictOne();
            entry = Create(key);
            entry.LastUsed = ++_clock;
            _entries.Add(key, entry);
        }
        if (evicted is not null)
        {
            LogEvicted(_log, evicted.Key.Endpoint, evicted.Key.NodeId, evicted.Handler.Active, Capacity);
            evicted.Channel.Dispose();
        }
        return entry.Channel;
    }

    /// <summary>
    /// A channel with the same mutual TLS and checks as <see cref="Get"/>, not cached: the caller owns and disposes it
    /// (tests and tools that dial one member for a while).
    /// </summary>
    public GrpcChannel CreateOwned(string endpoint, string expectedNodeId)
    {
        if (!IsValidEndpoint(endpoint)) throw new ArgumentException($"'{endpoint}' is not a member endpoint (https://host:port)", nameof(endpoint));
        if (!PoolIdentity.IsValidId(expectedNodeId)) throw new ArgumentException($"'{expectedNodeId}' is not a valid node id: {PoolIdentity.IdRule}", nameof(expectedNodeId));
        return Create(new Key(endpoint, expectedNodeId)).Channel;
    }

    // Under _gate. The least recently used idle channel; when every one has calls in flight, the least recently used.
    private Entry EvictOne()
    {
        Entry? idle = null, any = null;
        foreach (var e in _entries.Values)
        {
            if (any is null || e.LastUsed < any.LastUsed) any = e;
            if (e.Handler.Active == 0 && (idle is null || e.LastUsed < idle.LastUsed)) idle = e;
        }
        var victim = idle ?? any!;
        _entries.Remove(victim.Key);
        return victim;
    }

    private Entry Create(Key key)
    {
        var expected = key.NodeId;
        var address = key.Endpoint;
        var sockets = new SocketsHttpHandler
        {
            // Many concurrent session streams to one node: open more connections past the stream limit.
            EnableMultipleHttp2Connections = true,
            PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
            KeepAlivePingDelay = TimeSpan.FromSeconds(20),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
            KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests,
            ConnectTimeout = TimeSpan.FromSeconds(10),
            // Steps are small and frequent: a large window never holds a frame back waiting for a window update.
            InitialHttp2StreamWindowSize = 8 * 1024 * 1024,
        };
        if (_plaintext)
        {
            address = "http://" + address[(Uri.UriSchemeHttps.Length + 3)..];
        }
        else
        {
            var credential = _credential!;
            sockets.SslOptions = new SslClientAuthenticationOptions
            {
                EnabledSslProtocols = SslProtocols.Tls13 | SslProtocols.Tls12,
                CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                // A callback, not ClientCertificates: the server's acceptable-issuer list cannot filter it out, and a
                // renewed certificate is used from the next connection on.
                LocalCertificateSelectionCallback = (_, _, _, _, _) => credential.Current.Certificate,
                RemoteCertificateValidationCallback = (_, certificate, _, _) => AcceptPeer(certificate, expected),
            };
        }
        var counting = new ActiveCallHandler(sockets);
        var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = MaxMessageBytes,
            MaxSendMessageSize = MaxMessageBytes,
            // The channel owns (and disposes) its handler.
            HttpHandler = counting,
        });
        return new Entry(key, channel, counting);
    }

    /// <summary>The client side's check of a peer: a trusted pool member that is the node this hop names.</summary>
    public bool AcceptPeer(X509Certificate? certificate, string expectedNodeId)
    {
        // Policy errors (an untrusted root for the system, a name mismatch) are ignored: the pool CA is the only root.
        if (_trust is null) return false;
        var result = _trust.ValidateMember(certificate);
        if (!result.Trusted)
        {
            LogPeerRefused(_log, expectedNodeId, result.Reason ?? "untrusted");
            return false;
        }
        if (!string.Equals(result.Identity.NodeId, expectedNodeId, StringComparison.Ordinal))
        {
            LogPeerRefused(_log, expectedNodeId, $"the peer is {result.Identity}, not node {expectedNodeId}");
            return false;
        }
        return true;
    }

    public void Dispose()
    {
        List<Entry> all;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            all = [.. _entries.Values];
            _entries.Clear();
        }
        foreach (var e in all) e.Channel.Dispose();
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Warning, Message = "Refused the TLS peer dialled as node {ExpectedNodeId}: {Reason}")]
    private static partial void LogPeerRefused(ILogger log, string expectedNodeId, string reason);

    [LoggerMessage(EventId = 2, Level = LogLevel.Debug, Message = "Evicted the channel to {Endpoint} (node {NodeId}, {Active} calls in flight): {Capacity} channels held")]
    private static partial void LogEvicted(ILogger log, string endpoint, string nodeId, int active, int capacity);

    private readonly record struct Key(string Endpoint, string NodeId);

    private sealed class Entry(Key key, GrpcChannel channel, ActiveCallHandler handler)
    {
        public Key Key { get; } = key;
        public GrpcChannel Channel { get; } = channel;
        public ActiveCallHandler Handler { get; } = handler;
        public long LastUsed { get; set; }
    }

    /// <summary>
    /// Counts the calls in flight on a channel: a request counts from its send until its response is disposed (gRPC
    /// disposes it when the call ends), so eviction can tell an idle channel from one carrying sessions.
    /// </summary>
    private sealed class ActiveCallHandler(HttpMessageHandler inner) : DelegatingHandler(inner)
    {
        private int _active;

        public int Active => Volatile.Read(ref _active);

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _active);
            HttpResponseMessage response;
            try
            {
                response = await base.SendAsync(request, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                Interlocked.Decrement(ref _active);
                throw;
            }
            response.Content = new CountedContent(response.Content, this);
            return response;
        }

        internal void Release() => Interlocked.Decrement(ref _active);
    }

    /// <summary>The response body as received, releasing its call's count once when disposed.</summary>
    private sealed class CountedContent : HttpContent
    {
        private readonly HttpContent _inner;
        private ActiveCallHandler? _owner;

        public CountedContent(HttpContent inner, ActiveCallHandler owner)
        {
            _inner = inner;
            _owner = owner;
            foreach (var header in inner.Headers) Headers.TryAddWithoutValidation(header.Key, header.Value);
        }

        protected override Task SerializeToStreamAsync(Stream stream, System.Net.TransportContext? context) => _inner.CopyToAsync(stream);

        protected override Task SerializeToStreamAsync(Stream stream, System.Net.TransportContext? context, CancellationToken cancellationToken) =>
            _inner.CopyToAsync(stream, cancellationToken);

        protected override Task<Stream> CreateContentReadStreamAsync() => _inner.ReadAsStreamAsync();

        protected override Task<Stream> CreateContentReadStreamAsync(CancellationToken cancellationToken) => _inner.ReadAsStreamAsync(cancellationToken);

        protected override Stream CreateContentReadStream(CancellationToken cancellationToken) => _inner.ReadAsStream(cancellationToken);

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                Interlocked.Exchange(ref _owner, null)?.Release();
                _inner.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
