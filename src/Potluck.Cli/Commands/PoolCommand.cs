using System.CommandLine;
using System.Globalization;
using Microsoft.Extensions.Configuration;
using Potluck.Hosting;
using Potluck.Security;

namespace Potluck.Cli.Commands;

/// <summary>
/// `potluck pool`: the pool's certificate authority and its invites, on the CA holder's machine (the gateway's data
/// directory, $POTLUCK_HOME/pools/&lt;cluster-id&gt; unless --dir or Potluck__Security__PoolDirectory says otherwise).
/// A running gateway sees invites at once and revocations within 2 s.
/// </summary>
public static class PoolCommand
{
    public static Command Create()
    {
        var command = new Command("pool", "The pool's certificate authority: create it, invite machines with one-time tokens, revoke members");
        command.Subcommands.Add(Init());
        command.Subcommands.Add(Invite());
        command.Subcommands.Add(Revoke());
        command.Subcommands.Add(List());
        return CliApplication.AddExamples(command,
            "potluck pool init",
            "potluck pool invite --ttl 24h --uses 1",
            "potluck pool invite --volunteer --note \"community box\"",
            "potluck pool list",
            "potluck pool revoke node-192.168.1.12-7100");
    }

    private static Option<DirectoryInfo?> DirOption() =>
        new("--dir") { Description = "The pool CA's directory [default: $POTLUCK_HOME/pools/<cluster-id>; env: Potluck__Security__PoolDirectory]" };

    private static Option<string> ClusterOption() =>
        new("--cluster-id", "--pool-id") { Description = "The pool (cluster) id, as the gateway's --cluster-id", DefaultValueFactory = _ => "potluck" };

    private static Command Init()
    {
        var dir = DirOption();
        var cluster = ClusterOption();
        var command = new Command("init", "Create the pool's CA (ECDSA P-256, 10 years); nothing changes when one exists") { dir, cluster };
        command.SetAction(parse =>
        {
            var poolId = PoolId(parse.GetValue(cluster)!);
            var directory = Directory(parse.GetValue(dir), poolId);
            try
            {
                if (PoolAuthority.Exists(directory))
                {
                    using var existing = PoolAuthority.Load(directory, poolId);
                    Console.WriteLine($"pool {existing.PoolId} already has a CA in {directory}; nothing changed");
                    Console.WriteLine($"CA fingerprint (SHA-256): {existing.Fingerprint}");
                    return ExitCodes.Ok;
                }
                using var authority = PoolAuthority.Create(directory, poolId);
                Console.WriteLine($"created the CA of pool {authority.PoolId} in {directory}");
                Console.WriteLine($"CA fingerprint (SHA-256): {authority.Fingerprint}");
                Console.Error.WriteLine("Keep ca.key secret (it is 0600). Invite machines with `potluck pool invite`.");
                return ExitCodes.Ok;
            }
            catch (Exception e) when (e is PoolSecurityException or IOException or UnauthorizedAccessException)
            {
                throw new HostExitException(ExitCodes.Failure, e.Message, e);
            }
        });
        return command;
    }

    private static Command Invite()
    {
        var dir = DirOption();
        var cluster = ClusterOption();
        var ttl = new Option<string>("--ttl") { Description = "How long the token is valid: 30s, 15m, 24h, 7d (at most 365d)", DefaultValueFactory = _ => "24h" };
        var uses = new Option<int>("--uses") { Description = $"How many machines may join with it (1 to {JoinTokenStore.MaxUses})", DefaultValueFactory = _ => 1 };
        var volunteer = new Option<bool>("--volunteer") { Description = "A volunteer's token: its certificates name role volunteer, which can never be a silo" };
        var note = new Option<string?>("--note") { Description = "A note shown by `pool list` (who it is for)" };
        var tokenFile = new Option<FileInfo?>("--token-file") { Description = "Register this token instead of making one (a Helm chart makes its nodes' invite); it is stored hashed and not printed" };
        var command = new Command("invite", "Print a one-time join token (stdout) for `potluck node --join URL --token TOKEN`") { dir, cluster, ttl, uses, volunteer, note, tokenFile };
        command.SetAction(parse =>
        {
            var lifetime = ParseDuration(parse.GetValue(ttl)!);
            var count = parse.GetValue(uses);
            if (count is < 1 or > JoinTokenStore.MaxUses) throw new UsageException($"--uses must be between 1 and {JoinTokenStore.MaxUses} (got {count})");
            if (lifetime > JoinTokenStore.MaxLifetime) throw new UsageException($"--ttl must be at most {JoinTokenStore.MaxLifetime.TotalDays:F0}d");
            var text = parse.GetValue(note);
            if (text is { Length: > 200 }) throw new UsageException("--note must be at most 200 characters");
            var role = parse.GetValue(volunteer) ? PoolRole.Volunteer : PoolRole.Member;
            using var authority = Open(parse.GetValue(dir), PoolId(parse.GetValue(cluster)!));
            if (parse.GetValue(tokenFile) is { } file)
            {
                JoinToken given;
                try
                {
                    given = JoinToken.Parse(File.ReadAllText(file.FullName));
                    authority.Tokens.Register(given, lifetime, count, text);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    throw new UsageException($"cannot read --token-file {file.FullName}: {e.Message}");
                }
                catch (PoolSecurityException e)
                {
                    throw new UsageException($"--token-file {file.FullName}: {e.Message}");
                }
                Console.Error.WriteLine($"Registered invite {given.Id} to pool {authority.PoolId} as a {PoolIdentity.RoleName(given.Role)}: {count} use(s), valid for {lifetime}.");
                return ExitCodes.Ok;
            }
            var token = authority.Tokens.Create(lifetime, count, role, text);
            var expires = DateTimeOffset.UtcNow + lifetime;
            Console.WriteLine(token.ToString());
            Console.Error.WriteLine($"Invite {token.Id} to pool {authority.PoolId} as a {PoolIdentity.RoleName(role)}: {count} use(s), valid until {expires:yyyy-MM-dd HH:mm:ss} UTC.");
            Console.Error.WriteLine("On the joining machine (the gateway's pool port must be reachable):");
            Console.Error.WriteLine("  potluck node --model MODEL.gguf --join http://GATEWAY:8080 --token <the token above>");
            Console.Error.WriteLine("The token is shown once and stored only hashed; `potluck pool list` shows its uses and expiry.");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Revoke()
    {
        var dir = DirOption();
        var cluster = ClusterOption();
        var node = new Argument<string>("NODE") { Description = "The node id to remove (as its certificate and `potluck pool list` name it)" };
        var command = new Command("revoke", "Remove a member: every TLS check refuses it, its silo is marked dead and its connections close") { node, dir, cluster };
        command.SetAction(parse =>
        {
            var nodeId = parse.GetValue(node)!;
            if (!PoolIdentity.IsValidId(nodeId)) throw new UsageException($"'{nodeId}' is not a node id: {PoolIdentity.IdRule}");
            using var authority = Open(parse.GetValue(dir), PoolId(parse.GetValue(cluster)!));
            try
            {
                if (!authority.Revocations.Revoke(nodeId))
                {
                    Console.WriteLine($"node {nodeId} is already revoked from pool {authority.PoolId}");
                    return ExitCodes.Ok;
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new HostExitException(ExitCodes.Failure, $"cannot write {Path.Combine(authority.Directory, PoolAuthority.RevokedFile)}: {e.Message}", e);
            }
            Console.WriteLine($"revoked node {nodeId} from pool {authority.PoolId}; a running gateway drops it within a few seconds");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command List()
    {
        var dir = DirOption();
        var cluster = ClusterOption();
        var command = new Command("list", "Show the pool's invites (never their secrets) and its revoked nodes") { dir, cluster };
        command.SetAction(parse =>
        {
            using var authority = Open(parse.GetValue(dir), PoolId(parse.GetValue(cluster)!));
            var now = DateTimeOffset.UtcNow;
            Console.WriteLine($"pool {authority.PoolId}, CA {authority.Directory} (SHA-256 {authority.Fingerprint})");
            var tokens = authority.Tokens.List();
            if (tokens.Count == 0) Console.WriteLine("invites: none");
            else
            {
                Console.WriteLine("invites:");
                Console.WriteLine($"  {"ID",-15} {"ROLE",-9} {"USES LEFT",-10} {"EXPIRES (UTC)",-20} {"STATE",-8} NOTE");
                foreach (var token in tokens.OrderBy(t => t.CreatedUtc))
                {
                    var state = token.ExpiresUtc <= now ? "expired" : token.UsesLeft == 0 ? "used" : "valid";
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"  {token.Id,-15} {PoolIdentity.RoleName(token.Role),-9} {$"{token.UsesLeft}/{token.UsesAllowed}",-10} {token.ExpiresUtc:yyyy-MM-dd HH:mm:ss}  {state,-8} {token.Note}"));
                }
            }
            var revoked = authority.Revocations.Current.Order(StringComparer.Ordinal).ToArray();
            Console.WriteLine(revoked.Length == 0 ? "revoked nodes: none" : $"revoked nodes: {string.Join(", ", revoked)}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static string PoolId(string id) =>
        PoolIdentity.IsValidId(id) ? id : throw new UsageException($"--cluster-id '{id}' is not a valid pool id: {PoolIdentity.IdRule}");

    private static string Directory(DirectoryInfo? dir, string poolId)
    {
        if (dir is not null) return dir.FullName;
        var settings = PoolSecuritySettings.FromConfiguration(new ConfigurationBuilder().AddEnvironmentVariables().Build());
        return settings.PoolDirectoryFor(poolId);
    }

    private static PoolAuthority Open(DirectoryInfo? dir, string poolId)
    {
        var directory = Directory(dir, poolId);
        if (!PoolAuthority.Exists(directory))
            throw new HostExitException(ExitCodes.Failure, $"{directory} holds no pool CA; create it with `potluck pool init` (a gateway also creates it on its first start)");
        try
        {
            return PoolAuthority.Load(directory, poolId);
        }
        catch (Exception e) when (e is PoolSecurityException or IOException or UnauthorizedAccessException)
        {
            throw new HostExitException(ExitCodes.Failure, e.Message, e);
        }
    }

    /// <summary>30s, 15m, 24h, 7d, or a number of seconds.</summary>
    internal static TimeSpan ParseDuration(string text)
    {
        text = text.Trim();
        var unit = text.Length > 0 && char.IsAsciiLetter(text[^1]) ? char.ToLowerInvariant(text[^1]) : 's';
        var number = char.IsAsciiLetter(text.Length > 0 ? text[^1] : '0') ? text[..^1] : text;
        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || value <= 0 || !double.IsFinite(value))
            throw new UsageException($"--ttl must be a duration such as 30s, 15m, 24h or 7d (got '{text}')");
        var seconds = unit switch
        {
            's' => value,
            'm' => value * 60,
            'h' => value * 3600,
            'd' => value * 86400,
            _ => throw new UsageException($"--ttl must be a duration such as 30s, 15m, 24h or 7d (got '{text}')"),
        };
        if (seconds < 1) throw new UsageException("--ttl must be at least 1 s");
        if (seconds > JoinTokenStore.MaxLifetime.TotalSeconds) throw new UsageException($"--ttl must be at most {JoinTokenStore.MaxLifetime.TotalDays:F0}d");
        return TimeSpan.FromSeconds(seconds);
    }
}
