using System.CommandLine;
using Potluck.Protocol.V1;
using Potluck.Gateway;
using Potluck.Gateway.Access;

namespace Potluck.Cli.Commands;

/// <summary>
/// `potluck gateway`: the OpenAI-compatible front door; holds only the head tensors and the tokenizer. The flags become
/// configuration keys of section Potluck:Gateway over the environment (Potluck__Gateway__*, Potluck__Cluster__*).
/// </summary>
public static class GatewayCommand
{
    public static Command Create()
    {
        var defaults = new GatewayOptions { ModelPath = "" };
        var model = new Option<FileInfo?>("--model") { Description = "The GGUF file (only the embedding, final norm, LM head and tokenizer are used) [env: Potluck__Gateway__ModelPath]" };
        var listen = new Option<string?>("--listen") { Description = $"Address the HTTP API binds (0.0.0.0: all interfaces), and the silo unless --silo-listen [default: {defaults.ListenAddress}]" };
        var siloListen = new Option<string?>("--silo-listen") { Description = "Address the Orleans silo binds, when not the --listen address (e.g. 0.0.0.0 for nodes on other machines)" };
        var host = new Option<string?>("--host") { Description = "Deprecated: use --listen (on `gateway`, --host always meant the address the API binds)" };
        var port = new Option<int>("--port") { Description = "HTTP port of the OpenAI API", DefaultValueFactory = _ => defaults.Port };
        var siloPort = new Option<int>("--silo-port") { Description = "Orleans silo-to-silo port; every node must reach it (nodes --join HOST:this)", DefaultValueFactory = _ => defaults.SiloPort };
        var poolPort = new Option<int?>("--pool-port")
        {
            Description = $"HTTPS port of the pool endpoint (nodes enroll with invite tokens and renew their certificates there), bound like the API [default: {GatewayOptions.DefaultPoolPort}]",
        };
        var advertise = new Option<string?>("--advertise") { Description = $"Host or IP nodes dial this gateway's silo at [default: {defaults.AdvertisedHost}]" };
        var join = new Option<string?>("--join") { Description = "Seed silo HOST:PORT, when the gateway is not the pool's first member" };
        var redis = new Option<string?>("--redis") { Description = "Use Redis membership at HOST:PORT instead of a seed" };
        var clusterId = new Option<string>("--cluster-id") { Description = "Pool name shared by the gateway and its nodes", DefaultValueFactory = _ => defaults.ClusterId };
        var modelName = new Option<string?>("--model-name") { Description = "Name the API serves the model under (default: the file's general.name)" };
        var wire = new Option<HiddenType>("--wire") { Description = "Hidden states on the wire: F16 (half the bytes) or F32 (bit-exact)", DefaultValueFactory = _ => defaults.WireType };
        var threads = new Option<int>("--threads") { Description = "Threads for the head (0 = all cores)", DefaultValueFactory = _ => 0 };
        var maxSessions = new Option<int>("--max-sessions") { Description = "Generations at once; more wait in line", DefaultValueFactory = _ => defaults.MaxConcurrentSessions };
        var queueLimit = new Option<int>("--queue-limit")
        {
            Description = "Requests that may wait for a generation slot; beyond it they get 429 (the pool is at capacity)", DefaultValueFactory = _ => defaults.MaxQueuedRequests,
        };
        var queueTimeout = new Option<double>("--queue-timeout")
        {
            Description = "Seconds a request waits for a generation slot before it gets 429", DefaultValueFactory = _ => defaults.QueueTimeout.TotalSeconds,
        };
        var fastFailure = new Option<bool>("--fast-failure-detection") { Description = "Tight membership probing (tests only)", Hidden = true };
        var parentPid = HostedCommand.ParentPidOption();
        var accessLog = HostedCommand.AccessLogOption();
        var access = new HostedCommand.AccessFlags();
        var command = new Command("gateway", "Run the gateway alone: the OpenAI API, the model head, routing and failover (flags override Potluck__Gateway__* environment variables)")
        {
            model, listen, siloListen, host, port, poolPort, siloPort, advertise, join, redis, clusterId, modelName, wire, threads, maxSessions, queueLimit, queueTimeout, fastFailure, parentPid, accessLog,
        };
        foreach (var option in access.All) command.Options.Add(option);
        command.SetAction(async (parse, ct) =>
        {
            if (parse.GetValue(threads) < 0) throw new UsageException("--threads must be 0 (all cores) or more");
            if (parse.GetValue(maxSessions) < 1) throw new UsageException("--max-sessions must be at least 1");
            if (parse.GetValue(queueLimit) < 0) throw new UsageException("--queue-limit must be 0 (no queue) or more");
            if (parse.GetValue(queueTimeout) is not (> 0 and <= 86400))
                throw new UsageException($"--queue-timeout must be more than 0 and at most 86400 seconds (got {parse.GetValue(queueTimeout)})");
            HostedCommand.ValidatePort(parse.GetValue(port), "--port");
            HostedCommand.ValidatePort(parse.GetValue(siloPort), "--silo-port");
            if (parse.GetValue(poolPort) is { } poolPortValue) HostedCommand.ValidatePort(poolPortValue, "--pool-port");

            var flags = new HostedCommand.FlagConfiguration(GatewayOptions.ConfigurationSection);
            flags.Set(parse, model, nameof(GatewayOptions.ModelPath), file => file?.FullName);
            flags.Set(parse, listen, nameof(GatewayOptions.ListenAddress));
            if (HostedCommand.DeprecatedHost(parse, host, listen, "gateway", "the address the HTTP API binds") is { } hostValue)
                flags.Set(nameof(GatewayOptions.ListenAddress), hostValue);
            flags.Set(parse, port, nameof(GatewayOptions.Port));
            flags.Set(parse, siloPort, nameof(GatewayOptions.SiloPort));
            flags.Set(parse, poolPort, nameof(GatewayOptions.PoolPort));
            flags.Set(parse, advertise, nameof(GatewayOptions.AdvertisedHost));
            flags.Set(parse, join, nameof(GatewayOptions.PrimarySiloEndpoint));
            flags.Set(parse, redis, nameof(GatewayOptions.RedisConnectionString));
            flags.Set(parse, clusterId, nameof(GatewayOptions.ClusterId));
            flags.Set(parse, modelName, nameof(GatewayOptions.ModelName));
            flags.Set(parse, wire, nameof(GatewayOptions.WireType));
            flags.Set(parse, threads, nameof(GatewayOptions.Threads));
            flags.Set(parse, maxSessions, nameof(GatewayOptions.MaxConcurrentSessions));
            flags.Set(parse, queueLimit, nameof(GatewayOptions.MaxQueuedRequests));
            flags.Set(parse, queueTimeout, nameof(GatewayOptions.QueueTimeout), seconds => seconds.ToString("R", System.Globalization.CultureInfo.InvariantCulture));
            flags.Set(parse, fastFailure, nameof(GatewayOptions.FastFailureDetection));
            flags.Set(parse, siloListen, nameof(GatewayOptions.SiloListenAddress));
            access.Apply(parse, flags);
            var configuration = flags.Build();
            if (string.IsNullOrWhiteSpace(configuration[$"{GatewayOptions.ConfigurationSection}:{nameof(GatewayOptions.ModelPath)}"]))
                throw new UsageException("option '--model' is required (or set Potluck__Gateway__ModelPath)");
            var options = GatewayOptions.FromConfiguration(configuration);
            // Keys, certificate and the safe-default rule (no keys off loopback) before the model: exit 2, one line.
            GatewayAccess.Resolve(options);

            // Read the header first: a missing or corrupt model is one clear line, not a host crash.
            ModelCommands.InspectRunnableOrFail(options.ModelPath);
            HostedCommand.ApplyVerbosity(parse.GetValue(CliApplication.Verbose), parse.GetValue(accessLog));
            return await HostedCommand.RunAsync(parse.GetValue(parentPid), "gateway", stop => GatewayHost.RunAsync(options, stop));
        });
        return CliApplication.AddExamples(command,
            "potluck gateway --model ./model.gguf --port 8080",
            "potluck gateway --model ./model.gguf --listen 0.0.0.0 --advertise 192.168.1.10 --api-keys-file ./keys.txt --admin-key-file ./admin.key",
            "potluck gateway --model ./model.gguf --listen 0.0.0.0 --advertise 192.168.1.10 --api-key \"$KEY\" --tls-cert cert.pem --tls-key key.pem",
            "Potluck__Gateway__ModelPath=./model.gguf Potluck__Cluster__RedisConnectionString=redis:6379 potluck gateway");
    }
}
