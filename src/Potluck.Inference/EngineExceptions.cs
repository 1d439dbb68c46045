namespace Potluck.Inference;

/// <summary>Base of every error the engine raises on bad input; callers map these to protocol errors.</summary>
public class EngineException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The file is not a readable GGUF model (truncated, corrupt, wrong magic or version).</summary>
public sealed class GgufFormatException(string path, string detail, Exception? inner = null)
    : EngineException($"'{path}' is not a valid GGUF model: {detail}", inner);

/// <summary>The model's architecture is not one the span engine implements.</summary>
public sealed class UnsupportedArchitectureException(string architecture, IEnumerable<string> supported)
    : EngineException($"unsupported architecture '{architecture}'; supported: {string.Join(", ", supported)}");

/// <summary>A tensor the architecture requires is absent from the file, or has the wrong shape.</summary>
public sealed class ModelTensorException(string message) : EngineException(message);

/// <summary>A requested layer span does not lie within [0, n_layer).</summary>
public sealed class LayerRangeException(string message) : EngineException(message);

/// <summary>Hidden-state input does not have the shape the span expects.</summary>
public sealed class HiddenStateShapeException(string message) : EngineException(message);

/// <summary>Hidden-state input holds NaN or infinity.</summary>
public sealed class NonFiniteHiddenStateException(string message) : EngineException(message);

/// <summary>A step would write past the session's context window.</summary>
public sealed class ContextOverflowException(string message) : EngineException(message);

/// <summary>A step names a session the span does not hold.</summary>
public sealed class UnknownSessionException(string sessionId)
    : EngineException($"unknown session '{sessionId}'");

/// <summary>Opening a session would exceed the span's KV budget.</summary>
public sealed class KvBudgetExceededException(string message) : EngineException(message);

/// <summary>A step's positions are not contiguous with what the session's cache already holds.</summary>
public sealed class PositionMismatchException(string message) : EngineException(message);
