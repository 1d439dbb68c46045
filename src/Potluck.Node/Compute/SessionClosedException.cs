namespace Potluck.Node.Compute;

/// <summary>A session was closed (by its stream, the control plane or shutdown) while a step was pending.</summary>
public sealed class SessionClosedException(string sessionId, bool cancelled)
    : Exception($"session '{sessionId}' was {(cancelled ? "cancelled" : "closed")}")
{
    public bool Cancelled { get; } = cancelled;
}
