using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Potluck.Hosting;

namespace Potluck.Gateway.Access;

/// <summary>What a key grants: the OpenAI API, or also the operator endpoints.</summary>
public enum KeyRole
{
    Client,
    Admin,
}

/// <summary>
/// One configured key: its name (the rate-limit partition, and what logs and errors show), its role, its SHA-256 and
/// optional limits of its own. The key text itself is not kept.
/// </summary>
public sealed record AccessKey(string Name, KeyRole Role, byte[] Hash, int? RequestsPerMinute = null, int? ConcurrencyLimit = null);

/// <summary>
/// The API keys (from <see cref="GatewayOptions.ApiKeys"/>, <see cref="GatewayOptions.ApiKeysFile"/> and
/// POTLUCK_API_KEYS, which <see cref="GatewayOptions.WithConfiguration"/> folds into ApiKeys) and the admin key, hashed
/// at load. A presented key is hashed and compared with every stored hash in constant time.
/// </summary>
public sealed class AccessKeys
{
    /// <summary>Shorter keys are refused at start: they can be guessed.</summary>
    public const int MinimumLength = 8;

    private readonly AccessKey[] _keys;
    private readonly Dictionary<string, AccessKey> _byName;

    private AccessKeys(List<AccessKey> keys)
    {
        _keys = [.. keys];
        _byName = keys.ToDictionary(k => k.Name, StringComparer.Ordinal);
        HasApiKeys = keys.Any(k => k.Role == KeyRole.Client);
        Admin = keys.FirstOrDefault(k => k.Role == KeyRole.Admin);
    }

    /// <summary>Keys are required on the OpenAI API (else it is open, and any or no key is accepted).</summary>
    public bool HasApiKeys { get; }

    /// <summary>The admin key, or null when none is configured.</summary>
    public AccessKey? Admin { get; }

    public bool HasAdminKey => Admin is not null;

    public int ApiKeyCount => _keys.Count(k => k.Role == KeyRole.Client);

    /// <summary>The key named <paramref name="name"/> (for its limits), or null.</summary>
    public AccessKey? ByName(string name) => _byName.GetValueOrDefault(name);

    /// <summary>The configured key equal to <paramref name="presented"/>, or null. Every stored hash is compared (no early exit).</summary>
    public AccessKey? Match(string presented)
    {
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        Hash(presented, hash);
        AccessKey? match = null;
        foreach (var key in _keys)
            if (CryptographicOperations.FixedTimeEquals(hash, key.Hash)) match = key;
        return match;
    }

    /// <summary>Whether <paramref name="presented"/> is the admin key (the dashboard's login).</summary>
    public bool IsAdmin(string presented) => Match(presented) is { Role: KeyRole.Admin };

    private static void Hash(string key, Span<byte> hash)
    {
        var bytes = Encoding.UTF8.GetBytes(key);
        try
        {
            SHA256.HashData(bytes, hash);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(bytes);
        }
    }

    private static byte[] Hash(string key)
    {
        var hash = new byte[SHA256.HashSizeInBytes];
        Hash(key, hash);
        return hash;
    }

    /// <summary>Reads every key source of <paramref name="options"/>.</summary>
    /// <exception cref="ConfigurationUsageException">A file cannot be read, or a key or line is malformed.</exception>
    public static AccessKeys Load(GatewayOptions options)
    {
        var keys = new List<AccessKey>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        void Add(string? name, string key, string where, int? rpm = null, int? concurrency = null)
        {
            CheckKey(key, where);
            var hash = Hash(key);
            var hex = Convert.ToHexStringLower(hash);
            if (!seen.Add(hex)) return; // the same key from two sources
            name ??= $"key-{hex[..8]}";
            if (keys.Any(k => k.Name == name))
                throw new ConfigurationUsageException($"{where}: the key name '{name}' is used twice");
            keys.Add(new AccessKey(name, KeyRole.Client, hash, rpm, concurrency));
        }

        foreach (var key in options.ApiKeys) Add(null, key, "--api-key / ApiKeys / POTLUCK_API_KEYS");
        if (!string.IsNullOrWhiteSpace(options.ApiKeysFile))
        {
            var lineNumber = 0;
            foreach (var line in ReadFile(options.ApiKeysFile, "--api-keys-file"))
            {
                lineNumber++;
                if (ParseKeyLine(line, $"{options.ApiKeysFile}:{lineNumber}") is { } entry)
                    Add(entry.Name, entry.Key, $"{options.ApiKeysFile}:{lineNumber}", entry.RequestsPerMinute, entry.ConcurrencyLimit);
            }
        }

        var admin = AdminKeyOf(options);
        if (admin is not null)
        {
            CheckKey(admin, "the admin key");
            var hash = Hash(admin);
            if (seen.Contains(Convert.ToHexStringLower(hash)))
                throw new ConfigurationUsageException("the admin key is also an API key; give the admin a key of its own (API keys never grant admin)");
            keys.Add(new AccessKey("admin", KeyRole.Admin, hash));
        }
        return new AccessKeys(keys);
    }

    private static string? AdminKeyOf(GatewayOptions options)
    {
        var fromFile = string.IsNullOrWhiteSpace(options.AdminKeyFile) ? null : options.AdminKeyFile;
        if (fromFile is not null && !string.IsNullOrWhiteSpace(options.AdminKey))
            throw new ConfigurationUsageException("give the admin key once: --admin-key (AdminKey) or --admin-key-file (AdminKeyFile), not both");
        if (fromFile is null) return string.IsNullOrWhiteSpace(options.AdminKey) ? null : options.AdminKey.Trim();
        foreach (var line in ReadFile(fromFile, "--admin-key-file"))
        {
            var text = line.Trim();
            if (text.Length > 0 && !text.StartsWith('#')) return text;
        }
        throw new ConfigurationUsageException($"--admin-key-file {fromFile} holds no key");
    }

    private static string[] ReadFile(string path, string option)
    {
        try
        {
            return File.ReadAllLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new ConfigurationUsageException($"{option} {path} cannot be read: {e.Message}");
        }
    }

    private static void CheckKey(string key, string where)
    {
        if (key.Length < MinimumLength)
            throw new ConfigurationUsageException($"{where}: a key must be at least {MinimumLength} characters (got {key.Length}); use a long random one, e.g. `openssl rand -hex 24`");
        foreach (var c in key)
        {
            if (char.IsWhiteSpace(c) || char.IsControl(c) || c is ',' or ';')
                throw new ConfigurationUsageException($"{where}: a key must not contain whitespace, control characters, ',' or ';'");
        }
    }

    /// <summary>One parsed line of a keys file.</summary>
    public sealed record KeyLine(string? Name, string Key, int? RequestsPerMinute, int? ConcurrencyLimit);

    /// <summary>
    /// A keys-file line: <c>[NAME:]KEY [rpm=N] [concurrency=N] [# comment]</c>; null for a blank or comment line.
    /// NAME is letters, digits, '.', '_' or '-' (at most 64); the key is everything after the first ':'.
    /// </summary>
    public static KeyLine? ParseKeyLine(string line, string where)
    {
        var hash = line.IndexOf(" #", StringComparison.Ordinal);
        var text = (line.TrimStart().StartsWith('#') ? "" : hash >= 0 ? line[..hash] : line).Trim();
        if (text.Length == 0) return null;
        var tokens = text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        string? name = null;
        var key = tokens[0];
        var colon = key.IndexOf(':');
        if (colon >= 0)
        {
            name = key[..colon];
            key = key[(colon + 1)..];
            if (name.Length is 0 or > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-'))
                throw new ConfigurationUsageException($"{where}: the key name '{name}' must be 1-64 letters, digits, '.', '_' or '-'");
        }
        int? rpm = null, concurrency = null;
        foreach (var token in tokens.Skip(1))
        {
            var eq = token.IndexOf('=');
            var (option, value) = eq > 0 ? (token[..eq], token[(eq + 1)..]) : (token, "");
            if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n > 1_000_000)
                throw new ConfigurationUsageException($"{where}: '{token}' is not rpm=N or concurrency=N (N from 0 to 1000000, 0 = no limit)");
            switch (option)
            {
                case "rpm": rpm = n; break;
                case "concurrency": concurrency = n; break;
                default: throw new ConfigurationUsageException($"{where}: unknown setting '{option}' (expected rpm=N or concurrency=N)");
            }
        }
        return new KeyLine(name, key, rpm, concurrency);
    }
}
