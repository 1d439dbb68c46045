using System.CommandLine;
using System.Diagnostics;
using Potluck.Cli.Serve;
using Potluck.Cli.Supervision;
using Potluck.Gateway;
using Potluck.Gateway.Access;
using Potluck.Hosting;
using Potluck.Security;
using Potluck.Inference.Models;
using Spectre.Console;

namespace Potluck.Cli.Commands;

/// <summary>
/// `potluck serve`: a whole pool on one machine. The gateway and every node are separate OS processes
/// (this same executable), so one can fail alone, the way it would in a real pool.
/// </summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var model = new Option<FileInfo?>("--model") { Description = "GGUF file to serve (default: the trained demo model, models/potluck-demo.gguf)" };
        var nodes = new Option<int>("--nodes", "-n") { Description = "Node processes to start", DefaultValueFactory = _ => 2 };
        var replicas = new Option<int>("--replicas", "-r") { Description = "Nodes holding each span: the layers split into nodes/replicas spans", DefaultValueFactory = _ => 1 };
        var port = new Option<int>("--port", "-p") { Description = "HTTP port of the OpenAI API", DefaultValueFactory = _ => 8080 };
        var listen = new Option<string?>("--listen") { Description = "Address the gateway's HTTP API binds (0.0.0.0: all interfaces) [default: 127.0.0.1]" };
        var host = new Option<string?>("--host") { Description = "Deprecated: use --listen (on `serve`, --host always meant the address the API binds)" };
        var readyTimeout = new Option<int>("--ready-timeout") { Description = "Seconds to wait for the pool to become ready", DefaultValueFactory = _ => 120 };
        var fastFailure = new Option<bool>("--fast-failure-detection") { Description = "Tight membership probing in the children (tests only)", Hidden = true };
        var access = new HostedCommand.AccessFlags();
        var command = new Command("serve", "Run a whole pool on this machine: a gateway plus N nodes that split the model's layers evenly")
        {
            model, nodes, replicas, port, listen, host, readyTimeout, fastFailure,
        };
        foreach (var option in access.All) command.Options.Add(option);
        command.SetAction(async (parse, _) =>
        {
            var nodeCount = parse.GetValue(nodes);
            var replicaCount = parse.GetValue(replicas);
            var listenPort = parse.GetValue(port);
            if (listenPort is < 1 or > 65535) throw new UsageException($"--port must be between 1 and 65535 (got {listenPort})");
            var timeoutSeconds = parse.GetValue(readyTimeout);
            if (timeoutSeconds < 1) throw new UsageException($"--ready-timeout must be at least 1 second (got {timeoutSeconds})");
            var bind = HostedCommand.DeprecatedHost(parse, host, listen, "serve", "the address the HTTP API binds") ?? parse.GetValue(listen) ?? "127.0.0.1";
            // The gateway child's access rules, checked before anything is generated or started (exit 2, one line).
            var gatewayAccess = PlanAccess(parse, access, bind, listenPort);
            var plan = PlanPool(parse.GetValue(model), nodeCount, replicaCount, bind, listenPort, parse.GetValue(fastFailure)) with { Access = gatewayAccess };
            await using var pool = new LocalPoolRunner(plan, TimeSpan.FromSeconds(timeoutSeconds), parse.GetValue(CliApplication.Verbose));
            return await pool.ServeAsync();
        });
        return CliApplication.AddExamples(command,
            "potluck serve",
            "potluck serve --model ./qwen2.5-7b-instruct-q4_k_m.gguf --nodes 4 --replicas 2",
            "potluck serve --listen 0.0.0.0 --port 9000 --api-keys-file ./keys.txt --admin-key-file ./admin.key");
    }

    /// <summary>What the gateway child gets: keys through its environment, the other access flags as arguments.</summary>
    private static LocalPoolAccess PlanAccess(ParseResult parse, HostedCommand.AccessFlags flags, string bind, int port)
    {
        var (options, arguments, environment) = flags.ForChild(parse, new GatewayOptions { ModelPath = "serve", Port = port });
        options = options with { ListenAddress = bind, Port = port };
        var access = GatewayAccess.Resolve(options);
        return new LocalPoolAccess(arguments, environment)
        {
            ClientKey = FirstApiKey(options),
            KeysRequired = access.Keys.HasApiKeys,
            Certificate = access.Certificate?.Current,
        };
    }

    private static string? FirstApiKey(GatewayOptions options)
    {
        if (options.ApiKeys.Count > 0) return options.ApiKeys[0];
        if (string.IsNullOrWhiteSpace(options.ApiKeysFile)) return null;
        foreach (var line in File.ReadLines(options.ApiKeysFile))
            if (AccessKeys.ParseKeyLine(line, options.ApiKeysFile) is { } entry) return entry.Key;
        return null;
    }

    /// <summary>
    /// Everything that can fail before a process starts: the arithmetic, the model (demo or given) and the port.
    /// </summary>
    internal static LocalPoolPlan PlanPool(FileInfo? model, int nodes, int replicas, string host, int port, bool fastFailureDetection)
    {
        // Check the arithmetic before touching any file, so a typo fails in milliseconds.
        LayerPlan.Split(Math.Max(nodes / Math.Max(replicas, 1), 1), nodes, replicas);
        var modelPath = model?.FullName ?? DemoModels.Trained();
        var info = ModelCommands.InspectRunnableOrFail(modelPath);
        var assignments = LayerPlan.Split(info.LayerCount, nodes, replicas);
        var plan = new LocalPoolPlan(modelPath, host, port, assignments)
        {
            Ports = LocalPoolPorts.Allocate(assignments.Count),
            FastFailureDetection = fastFailureDetection,
        };
        LocalPoolCommands.EnsurePortFree(plan.Host, plan.Port);
        return plan;
    }
}

/// <summary>Starts, watches and stops the child processes of one local pool (for `serve` and `bench pool`).</summary>
internal sealed class LocalPoolRunner : IAsyncDisposable
{
    private static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(10);
    private static readonly string[] Colors = ["cyan", "green", "yellow", "magenta", "blue", "aqua", "lime", "fuchsia"];
    private readonly LocalPoolPlan plan;
    private readonly TimeSpan readyTimeout;
    private readonly bool verbose;
    private readonly bool echoChildren;
    private readonly Lock _consoleGate = new();
    private readonly bool _ansi = !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Ansi;
    private readonly TaskCompletionSource<SupervisedProcess> _gatewayDied = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ProcessSupervisor _supervisor;
    private SupervisedProcess? _earlyExit;

    /// <param name="echoChildren">Stream child output with a name prefix (serve); off, only failures are reported (bench).</param>
    public LocalPoolRunner(LocalPoolPlan plan, TimeSpan readyTimeout, bool verbose, bool echoChildren = true)
    {
        this.plan = plan;
        this.readyTimeout = readyTimeout;
        this.verbose = verbose;
        this.echoChildren = echoChildren;
        _supervisor = new ProcessSupervisor(WriteChildLine, StopGrace);
        _supervisor.UnexpectedExit += (child, code) =>
        {
            _earlyExit ??= child;
            if (child.Name == "gateway") _gatewayDied.TrySetResult(child);
            else WriteNotice($"{child.Name} exited with code {code}; the pool goes on without it");
        };
    }

    public Uri Url => plan.Url;

    /// <summary>SIGKILL every child now (a second Ctrl+C).</summary>
    public void KillAll() => _supervisor.KillAll();

    /// <summary>
    /// Starts the gateway and the nodes and waits until /readyz answers 200. Returns false when
    /// <paramref name="cancellationToken"/> fired first (the pool is then stopped); throws, after stopping
    /// every child, when a child died or the pool never became ready.
    /// </summary>
    public async Task<bool> StartAsync(CancellationToken cancellationToken)
    {
        var parentPid = Environment.ProcessId;
        // This run's pool CA, made before any child starts: the gateway holds it, the nodes (same user, same
        // POTLUCK_HOME) issue themselves certificates from it. Members then talk mutual TLS like any pool.
        PoolAuthority.LoadOrCreate(PoolDirectory, plan.ClusterId).Dispose();
        _supervisor.Start(LocalPoolCommands.Gateway(plan, parentPid, verbose));
        for (var i = 0; i < plan.Nodes.Count; i++) _supervisor.Start(LocalPoolCommands.Node(plan, plan.Nodes[i], i, parentPid, verbose));

        var failure = await WaitUntilReadyAsync(cancellationToken);
        if (cancellationToken.IsCancellationRequested)
        {
            WriteNotice("interrupted; stopping the pool");
            await StopAsync();
            return false;
        }
        if (failure is not null)
        {
            await _supervisor.StopAllAsync();
            throw new CliFailureException(failure);
        }
        return true;
    }

    /// <summary>`serve`: start, show the pool, run until a signal (exit 0; 130 before ready) or the gateway's death (exit 1).</summary>
    public async Task<int> ServeAsync()
    {
        using var signals = new ShutdownSignals();
        // A second Ctrl+C means "now": SIGKILL every child before this process goes down.
        signals.Forced = KillAll;
        // Interrupted before the pool was ready: the command did not finish starting.
        if (!await StartAsync(signals.Token)) return ExitCodes.Interrupted;

        PrintPool(await ServedModelNameAsync());
        var stopped = await Task.WhenAny(_gatewayDied.Task, Task.Delay(Timeout.Infinite, signals.Token).ContinueWith(_ => { }, TaskScheduler.Default));
        if (stopped == _gatewayDied.Task)
        {
            var gateway = await _gatewayDied.Task;
            await _supervisor.StopAllAsync();
            throw new CliFailureException($"the gateway exited unexpectedly (code {await gateway.Exited}); pool stopped");
        }
        WriteNotice("stopping the pool");
        await StopAsync();
        WriteNotice("pool stopped");
        return ExitCodes.Ok;
    }

    /// <summary>
    /// Nodes first, then the gateway: the gateway's silo is the pool's primary (it holds the membership table),
    /// so nodes that leave while it is still up deregister cleanly instead of retrying against a closed port.
    /// </summary>
    public async Task StopAsync()
    {
        await _supervisor.StopAsync(plan.Nodes.Select(node => node.Name));
        await _supervisor.StopAllAsync();
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        await _supervisor.DisposeAsync();
        // The CA was this run's only (its cluster id names the serve process): nothing may reuse its key.
        try
        {
            if (Directory.Exists(PoolDirectory)) Directory.Delete(PoolDirectory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private string PoolDirectory => new PoolSecuritySettings().PoolDirectoryFor(plan.ClusterId);

    /// <summary>
    /// Polls GET /readyz until it answers 200 and counts every node this pool started among the serving replicas (one
    /// chain is not enough: a node killed while its replica is still loading would lose its streams). Prints a line as
    /// each node starts serving. Returns null when ready, else why it never got there.
    /// </summary>
    private async Task<string?> WaitUntilReadyAsync(CancellationToken cancellationToken)
    {
        using var http = plan.Access.CreateClient(TimeSpan.FromSeconds(2));
        var readyz = new Uri(plan.Url, "readyz");
        var clock = Stopwatch.StartNew();
        var progress = new PoolProgress(plan.Nodes);
        while (clock.Elapsed < readyTimeout)
        {
            if (cancellationToken.IsCancellationRequested) return null;
            if (_earlyExit is { } dead)
                return $"{dead.Name} exited with code {await dead.Exited} before the pool was ready: {LastMeaningfulLine(dead)}";
            try
            {
                using var response = await http.GetAsync(readyz, cancellationToken);
                var body = await response.Content.ReadAsStringAsync(cancellationToken);
                foreach (var line in progress.Update(body))
                    if (echoChildren) WriteNotice(line);
                if (response.IsSuccessStatusCode && progress.AllServing) return null;
            }
            catch (System.Text.Json.JsonException)
            {
                // Not the gateway's answer (yet); try again.
            }
            catch (HttpRequestException)
            {
                // Not listening yet.
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                // One slow probe; try again.
            }
            catch (OperationCanceledException)
            {
                return null;
            }
            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(250), cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return null;
            }
        }
        return $"the pool was not ready within {readyTimeout.TotalSeconds:F0} s ({progress.Describe()}); see the logs above";
    }

    private static string LastMeaningfulLine(SupervisedProcess child)
    {
        var tail = child.Tail;
        for (var i = tail.Count - 1; i >= 0; i--)
            if (tail[i].StartsWith("potluck: error:", StringComparison.Ordinal)) return tail[i]["potluck: error:".Length..].Trim();
        for (var i = tail.Count - 1; i >= 0; i--)
            if (!string.IsNullOrWhiteSpace(tail[i])) return tail[i].Trim();
        return "no output";
    }

    /// <summary>The name clients must send as "model" (the gateway's /v1/models), for the example line.</summary>
    private async Task<string> ServedModelNameAsync()
    {
        using var http = plan.Access.CreateClient(TimeSpan.FromSeconds(5));
        try
        {
            return await new Chat.ChatClient(http, plan.Url).FirstModelAsync(CancellationToken.None);
        }
        catch (Exception error) when (error is HttpRequestException or CliFailureException or OperationCanceledException or System.Text.Json.JsonException)
        {
            return "MODEL";
        }
    }

    private void PrintPool(string modelName)
    {
        var supervisor = _supervisor;
        var table = new Table().Border(TableBorder.Rounded);
        table.AddColumn("Process");
        table.AddColumn("PID");
        table.AddColumn("Layers");
        table.AddColumn("Span");
        table.AddColumn("Replica");
        lock (_consoleGate)
        {
            table.AddRow("gateway", supervisor.Get("gateway").Pid.ToString(), "head", "-", "-");
            foreach (var node in plan.Nodes)
                table.AddRow(node.Name, supervisor.Get(node.Name).Pid.ToString(), Markup.Escape(node.Range), (node.SpanIndex + 1).ToString(), (node.Replica + 1).ToString());
            AnsiConsole.Write(table);
            var replicas = plan.Nodes.Count / Math.Max(1, plan.Nodes.Select(node => node.SpanIndex).Distinct().Count());
            Console.Out.WriteLine($"Pool ready: {plan.Url}  ({plan.Nodes.Count} of {plan.Nodes.Count} nodes serving, {replicas} per span; " +
                $"OpenAI API at {plan.Url}v1, Ctrl+C to stop)");
            Console.Out.WriteLine($"Dashboard: {plan.Url}  (open it in a browser: coverage, nodes, live gateway charts)");
            // Never the key itself: this line ends up in terminals and logs.
            var auth = plan.Access.KeysRequired ? " -H \"Authorization: Bearer $POTLUCK_API_KEY\"" : "";
            var insecure = plan.Access.Https ? " --cacert YOUR-CERT.pem" : "";
            Console.Out.WriteLine($"Try: curl{insecure} {plan.Url}v1/chat/completions{auth} -H 'Content-Type: application/json' -d '{{\"model\":\"{modelName}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}],\"max_tokens\":32}}'");
            if (!plan.Access.KeysRequired && !plan.Access.Https) Console.Out.WriteLine($" or: {CliApplication.InvokedAs} chat --url {plan.Url}");
        }
    }

    private void WriteChildLine(SupervisedProcess child, string line, bool isError)
    {
        if (!echoChildren) return;
        var prefix = $"[{child.Name}]";
        lock (_consoleGate)
        {
            if (_ansi)
            {
                var color = child.Name == "gateway" ? "white" : Colors[(child.Name.GetHashCode() & 0x7fffffff) % Colors.Length];
                AnsiConsole.Markup($"[{color}]{Markup.Escape(prefix)}[/] ");
                Console.Out.WriteLine(line);
            }
            else
            {
                Console.Out.WriteLine($"{prefix} {line}");
            }
        }
    }

    private void WriteNotice(string text)
    {
        lock (_consoleGate) Console.Out.WriteLine($"[serve] {text}");
    }
}
