using Microsoft.Extensions.Configuration;

namespace Potluck.Hosting;

/// <summary>
/// Where a member's pool credentials live, from section <see cref="ConfigurationSection"/> (environment variables
/// Potluck__Security__*). Member security itself (pool CA, mutual TLS, route tickets) has no off switch.
/// </summary>
/// <param name="PoolDirectory">The CA holder's directory (ca.crt, ca.key, tokens.json, revoked.json); default $POTLUCK_HOME/pools/&lt;pool-id&gt;.</param>
/// <param name="IdentityDirectory">A member's own credential (member.crt, member.key, ca.crt); default $POTLUCK_HOME/identity/&lt;pool-id&gt;/&lt;node-id&gt;.</param>
/// <param name="JoinToken">An invite (`potluck pool invite`) a node redeems for its first certificate.</param>
/// <param name="JoinTokenFile">A file holding that invite (a secret mounted into a container).</param>
public sealed record PoolSecuritySettings(string? PoolDirectory = null, string? IdentityDirectory = null, string? JoinToken = null, string? JoinTokenFile = null)
{
    public const string ConfigurationSection = "Potluck:Security";

    public static PoolSecuritySettings FromConfiguration(IConfiguration configuration, PoolSecuritySettings? defaults = null)
    {
        defaults ??= new PoolSecuritySettings();
        var section = configuration.GetSection(ConfigurationSection);
        return new PoolSecuritySettings(
            Read(section, nameof(PoolDirectory)) ?? defaults.PoolDirectory,
            Read(section, nameof(IdentityDirectory)) ?? defaults.IdentityDirectory,
            Read(section, nameof(JoinToken)) ?? defaults.JoinToken,
            Read(section, nameof(JoinTokenFile)) ?? defaults.JoinTokenFile);
    }

    public string PoolDirectoryFor(string poolId) =>
        PoolDirectory is { Length: > 0 } dir ? Path.GetFullPath(dir) : Path.Combine(PotluckHome.Directory, "pools", poolId);

    public string IdentityDirectoryFor(string poolId, string nodeId) =>
        IdentityDirectory is { Length: > 0 } dir ? Path.GetFullPath(dir) : Path.Combine(PotluckHome.Directory, "identity", poolId, nodeId);

    /// <summary>The invite's text: <see cref="JoinToken"/>, else the first line of <see cref="JoinTokenFile"/>; null when neither is set.</summary>
    /// <exception cref="ConfigurationUsageException">The token file cannot be read.</exception>
    public string? ReadJoinToken()
    {
        if (!string.IsNullOrWhiteSpace(JoinToken)) return JoinToken.Trim();
        if (string.IsNullOrWhiteSpace(JoinTokenFile)) return null;
        try
        {
            var info = new FileInfo(JoinTokenFile);
            if (info.Length > 4096) throw new ConfigurationUsageException($"the join token file {JoinTokenFile} is {info.Length} bytes; a token is a single line");
            var text = File.ReadAllText(JoinTokenFile).Trim();
            return text.Length == 0 ? throw new ConfigurationUsageException($"the join token file {JoinTokenFile} is empty") : text;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConfigurationUsageException($"cannot read the join token file {JoinTokenFile}: {e.Message}");
        }
    }

    private static string? Read(IConfigurationSection section, string key) =>
        string.IsNullOrWhiteSpace(section[key]) ? null : section[key]!.Trim();
}
