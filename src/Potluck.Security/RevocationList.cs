using System.Collections.Frozen;
using System.Text.Json;

namespace Potluck.Security;

/// <summary>
/// Node ids removed from the pool. Every TLS validation callback consults it, so a revoked member can neither
/// dial nor be dialled, whatever certificate it still holds. Reads are lock-free (a frozen set swapped whole).
/// </summary>
public sealed class RevocationList
{
    private readonly Lock _gate = new();
    private readonly string? _path;
    private FrozenSet<string> _revoked;

    /// <summary>An in-memory list (a member's copy, refreshed from the pool).</summary>
    public RevocationList(IEnumerable<string>? revoked = null)
    {
        _revoked = (revoked ?? []).ToFrozenSet(StringComparer.Ordinal);
    }

    private RevocationList(string path, IEnumerable<string> revoked) : this(revoked) => _path = path;

    /// <summary>Raised after the set changed; handlers close connections of newly revoked members.</summary>
    public event Action<IReadOnlySet<string>>? Changed;

    public IReadOnlySet<string> Current => _revoked;

    public bool IsRevoked(string nodeId) => _revoked.Contains(nodeId);

    /// <summary>The CA holder's persistent list (revoked.json in the pool directory).</summary>
    public static RevocationList Open(string path)
    {
        if (!File.Exists(path)) return new RevocationList(path, []);
        try
        {
            var ids = JsonSerializer.Deserialize(SecureFiles.ReadText(path), SecurityJsonContext.Default.StringArray) ?? [];
            return new RevocationList(path, ids.Where(PoolIdentity.IsValidId));
        }
        catch (JsonException e)
        {
            throw new PoolSecurityException($"{path} is not a revocation list: {e.Message}", e);
        }
    }

    /// <summary>Adds <paramref name="nodeId"/>; true when it was not revoked before.</summary>
    public bool Revoke(string nodeId)
    {
        lock (_gate)
        {
            if (_revoked.Contains(nodeId)) return false;
            var next = new HashSet<string>(_revoked, StringComparer.Ordinal) { nodeId };
            Save(next);
            _revoked = next.ToFrozenSet(StringComparer.Ordinal);
        }
        Changed?.Invoke(_revoked);
        return true;
    }

    /// <summary>Takes the pool's current list (a member refreshing its copy); raises <see cref="Changed"/> only on a change.</summary>
    public void Replace(IEnumerable<string> revoked)
    {
        var next = revoked.ToFrozenSet(StringComparer.Ordinal);
        lock (_gate)
        {
            if (next.SetEquals(_revoked)) return;
            Save(next);
            _revoked = next;
        }
        Changed?.Invoke(next);
    }

    /// <summary>
    /// Re-reads the file this list was opened from (another process, `potluck pool revoke`, writes it); raises
    /// <see cref="Changed"/> when it changed. True on a change; false for an in-memory list or an unchanged file.
    /// </summary>
    /// <exception cref="PoolSecurityException">The file is not a revocation list.</exception>
    public bool Reload()
    {
        if (_path is null) return false;
        FrozenSet<string> next;
        try
        {
            next = File.Exists(_path)
                ? (JsonSerializer.Deserialize(SecureFiles.ReadText(_path), SecurityJsonContext.Default.StringArray) ?? []).Where(PoolIdentity.IsValidId).ToFrozenSet(StringComparer.Ordinal)
                : FrozenSet<string>.Empty;
        }
        catch (JsonException e)
        {
            throw new PoolSecurityException($"{_path} is not a revocation list: {e.Message}", e);
        }
        lock (_gate)
        {
            if (next.SetEquals(_revoked)) return false;
            _revoked = next;
        }
        Changed?.Invoke(next);
        return true;
    }

    private void Save(IEnumerable<string> ids)
    {
        if (_path is null) return;
        SecureFiles.WriteText(_path, JsonSerializer.Serialize(ids.Order(StringComparer.Ordinal).ToArray(), SecurityJsonContext.Default.StringArray), secret: false);
    }
}
