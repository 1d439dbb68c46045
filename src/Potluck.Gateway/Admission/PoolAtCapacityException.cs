namespace Potluck.Gateway.Admission;

/// <summary>Why the admission queue turned a request away.</summary>
public enum AdmissionRejection
{
    /// <summary>Every slot was busy and the queue already held <see cref="GatewayOptions.MaxQueuedRequests"/> requests.</summary>
    QueueFull,

    /// <summary>The request waited <see cref="GatewayOptions.QueueTimeout"/> without getting a slot.</summary>
    Timeout,
}

/// <summary>
/// The pool has no generation slot for this request now: answered 429 with <see cref="RetryAfter"/> (an error event
/// when a stream already started). Never a failure of a node, so the message says the pool is at capacity.
/// </summary>
public sealed class PoolAtCapacityException(string message, TimeSpan retryAfter, AdmissionRejection reason) : Exception(message)
{
    /// <summary>When a retry has a fair chance (whole seconds, 1 to 60), for the Retry-After header.</summary>
    public TimeSpan RetryAfter { get; } = retryAfter;

    public AdmissionRejection Reason { get; } = reason;

    /// <summary>The metric tag of <see cref="Reason"/>.</summary>
    public string ReasonTag => Reason == AdmissionRejection.QueueFull ? "queue_full" : "timeout";
}
