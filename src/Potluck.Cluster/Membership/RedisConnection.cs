using StackExchange.Redis;

namespace Potluck.Cluster.Membership;

/// <summary>
/// The Redis connection of Orleans membership: a StackExchange.Redis connection string ("redis:6379", options after
/// commas: "password=...", "ssl=true", "sslHost=...") plus, optionally, a password read from a file (a mounted
/// secret), so the password never has to sit in an environment variable, a command line or a log line.
/// </summary>
public static class RedisConnection
{
    /// <summary>The configuration key of the password file (environment variable Potluck__Cluster__RedisPasswordFile).</summary>
    public const string PasswordFileKey = "Potluck:Cluster:RedisPasswordFile";

    /// <summary>
    /// The password in <paramref name="path"/>: the whole file, less trailing line breaks and spaces (what
    /// <c>echo</c>, editors and Kubernetes secrets created from files leave). The file must exist and hold a password.
    /// </summary>
    /// <exception cref="ArgumentException">The file is missing, unreadable or empty; the message names the file, never its content.</exception>
    public static string ReadPasswordFile(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"Redis password file '{path}' cannot be read: {e.Message}", e);
        }
        var password = text.TrimEnd('\r', '\n', ' ', '\t');
        if (password.Length == 0) throw new ArgumentException($"Redis password file '{path}' is empty");
        if (password.Contains('\n', StringComparison.Ordinal) || password.Contains('\r', StringComparison.Ordinal))
            throw new ArgumentException($"Redis password file '{path}' holds more than one line; put only the password in it");
        return password;
    }

    /// <summary>
    /// StackExchange.Redis options for <paramref name="connectionString"/>, with the password from
    /// <paramref name="passwordFile"/> when given. TLS comes from the connection string itself (<c>ssl=true</c>); the
    /// server's certificate is then checked against the system's trust store.
    /// </summary>
    /// <exception cref="ArgumentException">The connection string does not parse, the password file cannot be used, or
    /// both the connection string and a password file carry a password.</exception>
    public static ConfigurationOptions Options(string connectionString, string? passwordFile)
    {
        ConfigurationOptions options;
        try
        {
            options = ConfigurationOptions.Parse(connectionString);
        }
        catch (ArgumentException e)
        {
            // The parser's message may quote the offending option, which can be the password: name only the endpoints.
            throw new ArgumentException($"Redis connection string '{Redact(connectionString)}' does not parse: {FirstSentence(e.Message)}", e);
        }
        if (string.IsNullOrWhiteSpace(passwordFile)) return options;
        if (!string.IsNullOrEmpty(options.Password))
            throw new ArgumentException(
                $"the Redis connection string '{Redact(connectionString)}' has a password and {PasswordFileKey} names a password file too; give one of them");
        // Not through the connection string: a password may hold ',' or '=' (base64 does), which that syntax cannot carry.
        options.Password = ReadPasswordFile(passwordFile.Trim());
        return options;
    }

    /// <summary>The connection string with every option (password=..., user=...) left out: only the endpoints, for log lines.</summary>
    public static string Redact(string connectionString) =>
        string.Join(',', connectionString.Split(',').Where(part => !part.Contains('=', StringComparison.Ordinal)).Select(part => part.Trim()));

    private static string FirstSentence(string message)
    {
        var end = message.IndexOf(". ", StringComparison.Ordinal);
        return end > 0 ? message[..(end + 1)] : message;
    }
}
