namespace Potluck.Node.Compute;

/// <summary>The node is draining (shutting down) and refuses new sessions: not a lack of KV room, so callers re-route without asking for free KV.</summary>
public sealed class NodeDrainingException() : Exception("node is shutting down and accepts no new sessions");
