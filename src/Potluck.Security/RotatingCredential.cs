namespace Potluck.Security;

/// <summary>
/// This member's current credential. Renewal swaps it whole; TLS callbacks read <see cref="Current"/> on every
/// handshake, so new connections use the new certificate and open ones keep theirs until they close.
/// </summary>
public sealed class RotatingCredential(MemberCredential initial) : IDisposable
{
    private MemberCredential _current = initial;

    public MemberCredential Current => Volatile.Read(ref _current);

    public PoolIdentity Identity => Current.Identity;

    /// <summary>Raised after a swap.</summary>
    public event Action<MemberCredential>? Changed;

    /// <exception cref="PoolSecurityException">The new credential names another identity.</exception>
    public void Replace(MemberCredential next)
    {
        if (next.Identity != Current.Identity) throw new PoolSecurityException($"a renewed credential must keep the identity {Current.Identity}, not {next.Identity}");
        // The old certificate may still back a handshake in flight: it is not disposed, only dropped.
        Volatile.Write(ref _current, next);
        Changed?.Invoke(next);
    }

    public void Dispose() => Current.Dispose();
}
