namespace Potluck.Security;

/// <summary>A pool credential, token or ticket is missing, malformed or refused; the message says which and what to do.</summary>
public sealed class PoolSecurityException(string message, Exception? inner = null) : Exception(message, inner);
