using System.CommandLine;
using Microsoft.Extensions.Configuration;
using Potluck.Cli.Supervision;
using Potluck.Gateway;

namespace Potluck.Cli.Commands;

/// <summary>
/// Shared plumbing of the long-running `node` and `gateway` commands: flags turned into configuration over the
/// environment, shutdown on signal or when the parent `serve` dies, and the host's exit code passed through.
/// </summary>
public static class HostedCommand
{
    /// <summary>Set by `serve` on its children: they exit when that process is gone, so a killed serve leaves no orphans.</summary>
    public static Option<int?> ParentPidOption() => new("--parent-pid")
    {
        Description = "Exit when the process with this id (the supervising `potluck serve`) is gone",
        Hidden = true,
    };

    /// <summary>
    /// Runs a command's startup and host until Ctrl+C/SIGTERM or parent death. A host that ran and was asked to stop
    /// is a clean exit (0); a stop that arrived before the host was up (while joining or loading) is
    /// <see cref="ExitCodes.Interrupted"/>; a host's own non-zero code (it said why on stderr) is passed through.
    /// </summary>
    public static async Task<int> RunAsync(int? parentPid, string what, Func<CancellationToken, Task<int>> runHost)
    {
        using var signals = new ShutdownSignals();
        using var watcher = parentPid is { } pid ? new ParentProcessWatcher(pid, TimeSpan.FromMilliseconds(500)) : null;
        using var stop = watcher is null
            ? CancellationTokenSource.CreateLinkedTokenSource(signals.Token)
            : CancellationTokenSource.CreateLinkedTokenSource(signals.Token, watcher.ParentGone);
        int code;
        try
        {
            code = await runHost(stop.Token);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // Stopped before the host was serving.
            code = ExitCodes.Interrupted;
        }
        if (watcher is not null && watcher.ParentGone.IsCancellationRequested)
            Console.Error.WriteLine($"potluck: the supervising process is gone; {what} shut down");
        if (code == ExitCodes.Ok) return ExitCodes.Ok;
        if (code == ExitCodes.Interrupted)
        {
            Console.Error.WriteLine("potluck: interrupted");
            return code;
        }
        throw new HostExitException(code, $"the {what} could not start: {ExitCodes.Describe(code)} (see the message above)");
    }

    /// <summary>
    /// --verbose (debug logs, full exceptions) and --access-log (a line per request) for the host, through the
    /// environment its builder reads (Potluck.Hosting.PotluckLogging; containers set the same variables).
    /// </summary>
    public static void ApplyVerbosity(bool verbose, bool accessLog = false)
    {
        if (verbose) Environment.SetEnvironmentVariable(PotluckLogging.VerboseVariable, "true");
        if (accessLog) Environment.SetEnvironmentVariable(PotluckLogging.AccessLogVariable, "true");
    }

    /// <summary>`--access-log`: one log line per HTTP request (off by default).</summary>
    public static Option<bool> AccessLogOption() => new("--access-log")
    {
        Description = $"Log one line per HTTP request (method, path, status, time) [env: {PotluckLogging.AccessLogVariable}=true]",
    };

    public static int ValidatePort(int port, string option)
    {
        if (port is < 0 or > 65535) throw new UsageException($"{option} must be between 0 and 65535 (got {port})");
        return port;
    }

    /// <summary>
    /// `--host`, kept as a deprecated alias: says what it maps to (its meaning differed between commands) and fails
    /// when given together with the option it stands for.
    /// </summary>
    public static string? DeprecatedHost(ParseResult parse, Option<string?> host, Option<string?> replacement, string command, string meaning)
    {
        if (parse.GetValue(host) is not { } value) return null;
        if (parse.GetResult(replacement) is { Implicit: false })
            throw new UsageException($"--host is a deprecated alias of {replacement.Name} on `potluck {command}`; pass only {replacement.Name}");
        Console.Error.WriteLine($"potluck: warning: --host is deprecated; on `potluck {command}` it means {replacement.Name} {value} ({meaning})");
        return value;
    }

    /// <summary>The flags a user gave, as configuration keys of one section, layered over the environment variables.</summary>
    public sealed class FlagConfiguration(string section)
    {
        private readonly Dictionary<string, string?> _values = new(StringComparer.OrdinalIgnoreCase);

        /// <summary>Sets <paramref name="key"/> when the flag was given (an implicit default leaves the environment's value or the options' default).</summary>
        public void Set<T>(ParseResult parse, Option<T> option, string key, Func<T, string?>? format = null)
        {
            if (parse.GetResult(option) is not { Implicit: false }) return;
            var value = parse.GetValue(option);
            Set(key, format is null ? Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture) : format(value!));
        }

        public void Set(string key, string? value) => _values[$"{section}:{key}"] = value;

        /// <summary>The flags given so far, as configuration keys.</summary>
        public IReadOnlyDictionary<string, string?> Values => _values;

        /// <summary>Sets a key of another section (Potluck:Security:JoinToken from `node --token`).</summary>
        public void SetKey(string path, string? value) => _values[path] = value;

        /// <summary>Environment variables (Potluck__Node__*, Potluck__Cluster__*, OTEL_*) first, the flags over them.</summary>
        public IConfiguration Build() => new ConfigurationBuilder()
            .AddEnvironmentVariables()
            .AddInMemoryCollection(_values)
            .Build();
    }

    /// <summary>
    /// The gateway's access flags, shared by `gateway` and `serve`: API keys, admin key, CORS, allowed hosts, HTTPS,
    /// --insecure and the per-key limits. `gateway` turns them into Potluck:Gateway keys; `serve` hands them to its
    /// gateway child, the keys through the environment (never its command line, which `ps` shows).
    /// </summary>
    public sealed class AccessFlags
    {
        private static readonly GatewayOptions Defaults = new() { ModelPath = "" };

        public Option<string[]> ApiKey { get; } = new("--api-key")
        {
            Description = $"An API key the OpenAI API accepts (Bearer or x-api-key); repeat for more. Without any key the API is open, on loopback only [env: {GatewayOptions.ApiKeysEnvironmentVariable}, comma separated]",
        };
        public Option<FileInfo?> ApiKeysFile { get; } = new("--api-keys-file") { Description = "File of API keys, one a line: [NAME:]KEY [rpm=N] [concurrency=N], '#' comments" };
        public Option<string?> AdminKey { get; } = new("--admin-key") { Description = "Key of the operator endpoints and the dashboard login (API keys never grant them) [env: Potluck__Gateway__AdminKey]" };
        public Option<FileInfo?> AdminKeyFile { get; } = new("--admin-key-file") { Description = "File holding the admin key (instead of --admin-key)" };
        public Option<string[]> CorsOrigin { get; } = new("--cors-origin") { Description = "Allow browser calls from this origin (scheme://host[:port]); repeat for more. Default: CORS off" };
        public Option<string[]> AllowedHost { get; } = new("--allowed-host") { Description = "Host name the API answers to (beyond the loopback names); repeat for more, '*' for any. Default: see docs/cli.md" };
        public Option<FileInfo?> TlsCert { get; } = new("--tls-cert") { Description = "Serve the API over HTTPS with this PEM certificate (with --tls-key)" };
        public Option<FileInfo?> TlsKey { get; } = new("--tls-key") { Description = "PEM private key of --tls-cert" };
        public Option<bool> Insecure { get; } = new("--insecure") { Description = "Serve a non-loopback API without keys and the operator endpoints without an admin key (warns on every start)" };
        public Option<int?> RateLimit { get; } = new("--rate-limit") { Description = $"Requests per minute per API key (per client IP when open); 0 = no limit [default: {Defaults.RateLimitPerMinute}]" };
        public Option<int?> ConcurrencyLimit { get; } = new("--concurrency-limit") { Description = $"Requests at once per API key (per client IP when open); 0 = no limit [default: {Defaults.ConcurrencyLimit}]" };

        public IEnumerable<Option> All => [ApiKey, ApiKeysFile, AdminKey, AdminKeyFile, CorsOrigin, AllowedHost, TlsCert, TlsKey, Insecure, RateLimit, ConcurrencyLimit];

        private void Check(ParseResult parse)
        {
            if (parse.GetValue(RateLimit) is < 0) throw new UsageException("--rate-limit must be 0 (no limit) or more");
            if (parse.GetValue(ConcurrencyLimit) is < 0) throw new UsageException("--concurrency-limit must be 0 (no limit) or more");
            if (parse.GetValue(TlsCert) is null != parse.GetValue(TlsKey) is null) throw new UsageException("--tls-cert and --tls-key go together");
            if (parse.GetValue(AdminKey) is not null && parse.GetValue(AdminKeyFile) is not null) throw new UsageException("pass --admin-key or --admin-key-file, not both");
        }

        /// <summary>`gateway`: the flags as Potluck:Gateway keys (lists joined with commas, so a flag replaces a variable of the same key).</summary>
        public void Apply(ParseResult parse, FlagConfiguration flags)
        {
            Check(parse);
            flags.Set(parse, ApiKey, nameof(GatewayOptions.ApiKeys), keys => string.Join(',', keys));
            flags.Set(parse, ApiKeysFile, nameof(GatewayOptions.ApiKeysFile), file => file?.FullName);
            flags.Set(parse, AdminKey, nameof(GatewayOptions.AdminKey));
            flags.Set(parse, AdminKeyFile, nameof(GatewayOptions.AdminKeyFile), file => file?.FullName);
            flags.Set(parse, CorsOrigin, nameof(GatewayOptions.CorsOrigins), origins => string.Join(',', origins));
            flags.Set(parse, AllowedHost, nameof(GatewayOptions.AllowedHosts), hosts => string.Join(',', hosts));
            flags.Set(parse, TlsCert, nameof(GatewayOptions.TlsCertificateFile), file => file?.FullName);
            flags.Set(parse, TlsKey, nameof(GatewayOptions.TlsKeyFile), file => file?.FullName);
            flags.Set(parse, Insecure, nameof(GatewayOptions.Insecure));
            flags.Set(parse, RateLimit, nameof(GatewayOptions.RateLimitPerMinute));
            flags.Set(parse, ConcurrencyLimit, nameof(GatewayOptions.ConcurrencyLimit));
        }

        /// <summary>`serve`: the same flags applied over <paramref name="options"/> (for the up-front check) and split for the child.</summary>
        public (GatewayOptions Options, List<string> Arguments, Dictionary<string, string> Environment) ForChild(ParseResult parse, GatewayOptions options)
        {
            Check(parse);
            var arguments = new List<string>();
            var environment = new Dictionary<string, string>(StringComparer.Ordinal);
            var keys = parse.GetValue(ApiKey) ?? [];
            if (keys.Length > 0)
            {
                // Added to what the child inherits from serve's own POTLUCK_API_KEYS.
                var inherited = System.Environment.GetEnvironmentVariable(GatewayOptions.ApiKeysEnvironmentVariable);
                environment[GatewayOptions.ApiKeysEnvironmentVariable] = string.Join(',', string.IsNullOrWhiteSpace(inherited) ? keys : [inherited, .. keys]);
            }
            if (parse.GetValue(AdminKey) is { } admin) environment["Potluck__Gateway__AdminKey"] = admin;
            void File(Option<FileInfo?> option, string flag)
            {
                if (parse.GetValue(option) is { } file) arguments.AddRange([flag, file.FullName]);
            }
            File(ApiKeysFile, "--api-keys-file");
            File(AdminKeyFile, "--admin-key-file");
            File(TlsCert, "--tls-cert");
            File(TlsKey, "--tls-key");
            foreach (var origin in parse.GetValue(CorsOrigin) ?? []) arguments.AddRange(["--cors-origin", origin]);
            foreach (var host in parse.GetValue(AllowedHost) ?? []) arguments.AddRange(["--allowed-host", host]);
            if (parse.GetValue(Insecure)) arguments.Add("--insecure");
            if (parse.GetValue(RateLimit) is { } rpm) arguments.AddRange(["--rate-limit", rpm.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
            if (parse.GetValue(ConcurrencyLimit) is { } permits) arguments.AddRange(["--concurrency-limit", permits.ToString(System.Globalization.CultureInfo.InvariantCulture)]);

            // What the child will see: serve's environment and these flags (it gets the keys through its environment instead).
            var flags = new FlagConfiguration(GatewayOptions.ConfigurationSection);
            Apply(parse, flags);
            var configuration = new ConfigurationBuilder().AddEnvironmentVariables().AddInMemoryCollection(flags.Values).Build();
            return (options.WithConfiguration(configuration), arguments, environment);
        }
    }
}
