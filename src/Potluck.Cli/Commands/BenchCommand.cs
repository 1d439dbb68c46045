using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Serialization;
using Potluck.Cli.Serve;
using Potluck.Protocol.V1;
using Potluck.Gateway.Bench;
using Potluck.Reference;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;
using Potluck.Node.Bench;
using Spectre.Console;

namespace Potluck.Cli.Commands;

/// <summary>`potluck bench engine|hop|pool|load`: side-by-side benchmarks with ratio tables and a JSON report.</summary>
public static class BenchCommand
{
    private static readonly JsonSerializerOptions ReportJson = new()
    {
        WriteIndented = true,
        Converters = { new JsonStringEnumConverter() },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static Command Create()
    {
        var bench = new Command("bench", "Benchmarks against llama.cpp in the same process or on the same machine; prints ratios and writes a JSON report");
        bench.Subcommands.Add(CreateEngine());
        bench.Subcommands.Add(CreateHop());
        bench.Subcommands.Add(CreatePool());
        bench.Subcommands.Add(CreateLoad());
        return CliApplication.AddExamples(bench,
            "potluck bench engine --report bench-engine.json",
            "potluck bench hop --steps 500",
            "potluck bench load --concurrency 1,4,16 --report load.json");
    }

    public static Option<FileInfo?> ReportOption() => new("--report") { Description = "Write the results as JSON to this file" };

    private static Command CreateEngine()
    {
        var model = new Option<FileInfo?>("--model") { Description = "GGUF to measure (default: a generated 2048-wide, 8-layer llama model per --types)" };
        var types = new Option<GgmlType[]>("--types")
        {
            Description = "Weight types of the generated model (ignored with --model)",
            DefaultValueFactory = _ => [GgmlType.Q8_0, GgmlType.Q4_K],
            AllowMultipleArgumentsPerToken = true,
        };
        var prompt = new Option<int>("--prompt") { Description = "Prompt tokens (prefill)", DefaultValueFactory = _ => 128 };
        var decode = new Option<int>("--decode") { Description = "Greedy tokens decoded after the prompt", DefaultValueFactory = _ => 16 };
        var rounds = new Option<int>("--rounds") { Description = "Interleaved rounds (each runs both engines once)", DefaultValueFactory = _ => 5 };
        var threads = new Option<int>("--threads") { Description = "Threads for both engines", DefaultValueFactory = _ => Math.Max(1, Environment.ProcessorCount) };
        var spans = new Option<int>("--spans") { Description = "Split the model into this many spans on the Potluck side", DefaultValueFactory = _ => 1 };
        var report = ReportOption();
        var command = new Command("engine", """
            The span engine vs llama.cpp (LLamaSharp) on the same GGUF in one process, interleaved round by round:
            prefill of a fixed prompt, then greedy decode. Ratios are llama.cpp time / Potluck time (1.0 = parity, above 1 = faster).
            """)
        {
            model, types, prompt, decode, rounds, threads, spans, report,
        };
        command.SetAction(parse =>
        {
            var options = new EngineBenchmarkOptions
            {
                ModelPath = parse.GetValue(model)?.FullName,
                Types = parse.GetRequiredValue(types),
                PromptTokens = Positive(parse.GetValue(prompt), "--prompt"),
                DecodeTokens = Positive(parse.GetValue(decode), "--decode"),
                Rounds = Positive(parse.GetValue(rounds), "--rounds"),
                Threads = Positive(parse.GetValue(threads), "--threads"),
                Spans = Positive(parse.GetValue(spans), "--spans"),
                CacheDirectory = PotluckPaths.ModelCache,
            };
            if (options.ModelPath is { } path)
            {
                var info = ModelCommands.InspectRunnableOrFail(path);
                options = options with { Types = [info.WeightType] };
            }
            NativeRuntime.EnsureLoaded();
            var results = ProgressDisplay.Run("engine benchmark", progress => EngineBenchmark.Run(options, progress));
            PrintEngine(results, options);
            WriteReport(parse.GetValue(report), "engine", options, results);
            return ExitCodes.Ok;
        });
        return CliApplication.AddExamples(command,
            "potluck bench engine",
            "potluck bench engine --types Q8_0 --rounds 3 --report engine.json",
            "potluck bench engine --model ./qwen2.5-0.5b-instruct-q8_0.gguf --spans 2");
    }

    private static Command CreateHop()
    {
        var width = new Option<int>("--width") { Description = "Hidden size of a row (2048 = a 1B-3B class model)", DefaultValueFactory = _ => 2048 };
        var stages = new Option<int>("--stages") { Description = "Stages in the long chain (at least 2)", DefaultValueFactory = _ => 3 };
        var steps = new Option<int>("--steps") { Description = "Measured 1-row steps per measurement (fewer at more rows)", DefaultValueFactory = _ => 1000 };
        var warmup = new Option<int>("--warmup") { Description = "Unmeasured 1-row steps before each measurement", DefaultValueFactory = _ => 200 };
        var wire = new Option<HiddenType>("--wire") { Description = "Hidden-state type on the wire (F16 or F32)", DefaultValueFactory = _ => HiddenType.F16 };
        var pairs = new Option<int>("--pairs") { Description = "Interleaved plaintext/TLS pairs per row count (figures: median and min over them)", DefaultValueFactory = _ => 5 };
        var rows = new Option<string>("--rows") { Description = "Rows per step, comma separated (1 = decode, 512 = a prefill chunk)", DefaultValueFactory = _ => "1,512" };
        var report = ReportOption();
        var command = new Command("hop", """
            What one extra node adds per step: real gRPC streams between Stage servers on loopback with transport-only
            stages, a one-stage route vs a chain, per hop = (chain - single) / (stages - 1); measured over mutual TLS with
            pool certificates (what nodes serve) and over plaintext h2c (only inside this benchmark), as interleaved pairs,
            which gives what TLS costs per hop.
            """)
        {
            width, stages, steps, warmup, wire, pairs, rows, report,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            var options = new HopBenchmarkOptions
            {
                Width = Positive(parse.GetValue(width), "--width"),
                Stages = parse.GetValue(stages) >= 2 ? parse.GetValue(stages) : throw new UsageException("--stages must be at least 2"),
                Steps = Positive(parse.GetValue(steps), "--steps"),
                WarmupSteps = parse.GetValue(warmup) >= 0 ? parse.GetValue(warmup) : throw new UsageException("--warmup must be 0 or more"),
                WireType = parse.GetValue(wire),
                Pairs = Positive(parse.GetValue(pairs), "--pairs"),
                RowCounts = ParseRows(parse.GetValue(rows)),
            };
            using var signals = new ShutdownSignals();
            var result = await ProgressDisplay.RunAsync("hop benchmark", progress =>
                HopBenchmark.RunAsync(options, new SynchronousProgress<string>(stage => progress.Report((stage, 0))), signals.Token));
            PrintHop(result);
            WriteReport(parse.GetValue(report), "hop", options, result);
            return ExitCodes.Ok;
        });
        return CliApplication.AddExamples(command,
            "potluck bench hop",
            "potluck bench hop --wire F32 --rows 1 --pairs 7 --report hop.json");
    }

    private static int[] ParseRows(string? text) => ParseCounts(text, "--rows", "row count", 4096);

    private static int[] ParseCounts(string? text, string option, string what, int max)
    {
        var parts = (text ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw new UsageException($"{option} needs at least one {what}");
        var result = new int[parts.Length];
        for (var i = 0; i < parts.Length; i++)
            result[i] = int.TryParse(parts[i], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) && n >= 1 && n <= max
                ? n : throw new UsageException($"{option}: '{parts[i]}' is not a {what} in [1, {max}]");
        return result;
    }

    private static Command CreatePool()
    {
        var url = new Option<Uri?>("--url")
        {
            Description = "Measure this running gateway instead of starting a local pool (needs --model: the same GGUF)",
            CustomParser = ChatCommand.ParseUrl,
        };
        var model = new Option<FileInfo?>("--model") { Description = "GGUF the pool serves (default: the demo model); llama.cpp runs it whole as the baseline" };
        var nodes = new Option<int>("--nodes") { Description = "Nodes of the local pool", DefaultValueFactory = _ => 3 };
        var prompt = new Option<int>("--prompt") { Description = "Prompt tokens", DefaultValueFactory = _ => 64 };
        var decode = new Option<int>("--decode") { Description = "Tokens generated per run (end of sequence ignored)", DefaultValueFactory = _ => 64 };
        var runs = new Option<int>("--runs") { Description = "Measured runs of each side", DefaultValueFactory = _ => 5 };
        var report = ReportOption();
        var command = new Command("pool", """
            A pool end to end through the gateway (streamed, greedy) vs llama.cpp running the whole model in this process:
            time to first token and decode speed. Without --url it starts a local pool (like `serve`) and stops it afterwards.
            """)
        {
            url, model, nodes, prompt, decode, runs, report,
        };
        command.SetAction(async (parse, _) =>
        {
            var target = parse.GetValue(url);
            var modelFile = parse.GetValue(model);
            if (target is not null && modelFile is null)
                throw new UsageException("--url needs --model: the GGUF that pool serves, so llama.cpp can run the same model");
            var promptTokens = Positive(parse.GetValue(prompt), "--prompt");
            var decodeTokens = parse.GetValue(decode) >= 2 ? parse.GetValue(decode) : throw new UsageException("--decode must be at least 2");
            var runCount = Positive(parse.GetValue(runs), "--runs");
            using var signals = new ShutdownSignals();
            LocalPoolRunner? pool = null;
            try
            {
                var measured = await PoolUnderTestAsync(parse, target, modelFile, Positive(parse.GetValue(nodes), "--nodes"), signals, started => pool = started);
                if (measured is not { } under) return ExitCodes.Interrupted;
                (target, var modelPath) = under;
                NativeRuntime.EnsureLoaded();
                var options = new PoolBenchmarkOptions(target, modelPath, promptTokens, decodeTokens, runCount);
                var result = await ProgressDisplay.RunAsync("pool benchmark", progress =>
                    PoolBenchmark.RunAsync(options, new SynchronousProgress<string>(stage => progress.Report((stage, 0))), signals.Token));
                PrintPool(result);
                WriteReport(parse.GetValue(report), "pool", new { options.GatewayUrl, options.ModelPath, options.PromptTokens, options.DecodeTokens, options.Runs, Nodes = pool is null ? (int?)null : parse.GetValue(nodes) },
                    new { Figures = result, result.DecodeRatio, result.TimeToFirstTokenRatio });
                return ExitCodes.Ok;
            }
            finally
            {
                if (pool is not null) await pool.DisposeAsync();
            }
        });
        return CliApplication.AddExamples(command,
            "potluck bench pool",
            "potluck bench pool --nodes 2 --runs 3 --report pool.json",
            "potluck bench pool --url http://pool.lan:8080 --model ./model.gguf");
    }

    private static Command CreateLoad()
    {
        var url = new Option<Uri?>("--url")
        {
            Description = "Measure this running gateway instead of starting a local pool (needs --model: the same GGUF)",
            CustomParser = ChatCommand.ParseUrl,
        };
        var model = new Option<FileInfo?>("--model") { Description = "GGUF the pool serves (default: the demo model); llama.cpp runs it whole as the baseline" };
        var nodes = new Option<int>("--nodes") { Description = "Nodes of the local pool", DefaultValueFactory = _ => 3 };
        var concurrency = new Option<string>("--concurrency") { Description = "Sessions started together, one level after another, comma separated", DefaultValueFactory = _ => "1,4,16" };
        var prompt = new Option<int>("--prompt") { Description = "Prompt tokens of every session (token ids, distinct per session)", DefaultValueFactory = _ => 128 };
        var tokens = new Option<int>("--tokens") { Description = "Output tokens of every session (end of sequence ignored)", DefaultValueFactory = _ => 128 };
        var rounds = new Option<int>("--rounds") { Description = "Interleaved rounds per level (each runs both sides once)", DefaultValueFactory = _ => 3 };
        var threads = new Option<int>("--threads") { Description = "llama.cpp's threads", DefaultValueFactory = _ => Math.Max(1, Environment.ProcessorCount) };
        var apiKey = new Option<string?>("--api-key") { Description = "API key for a gateway that requires one (with --url)" };
        var timeout = new Option<int>("--timeout") { Description = "Seconds one session may take; a stall of a quarter of that (at least 10 s) between chunks also fails it", DefaultValueFactory = _ => 300 };
        var report = ReportOption();
        var command = new Command("load", """
            Many users at once: each round starts N streamed greedy completions together through the gateway, then
            llama.cpp decodes the same N prompts as one batch (n_seq_max = N) in this process. Per level: aggregate
            tokens/s, time to first token and inter-token latency p50/p95. Without --url it starts a local pool like
            `bench pool` and stops it afterwards. Failed or stalled sessions are counted in the errors row.
            """)
        {
            url, model, nodes, concurrency, prompt, tokens, rounds, threads, apiKey, timeout, report,
        };
        command.SetAction(async (parse, _) =>
        {
            var target = parse.GetValue(url);
            var modelFile = parse.GetValue(model);
            if (target is not null && modelFile is null)
                throw new UsageException("--url needs --model: the GGUF that pool serves, so llama.cpp can run the same model");
            var levels = ParseCounts(parse.GetValue(concurrency), "--concurrency", "session count", LoadBenchmarkOptions.MaxConcurrency);
            var promptTokens = Positive(parse.GetValue(prompt), "--prompt");
            var outputTokens = parse.GetValue(tokens) >= 2 ? parse.GetValue(tokens) : throw new UsageException("--tokens must be at least 2");
            var roundCount = Positive(parse.GetValue(rounds), "--rounds");
            var threadCount = Positive(parse.GetValue(threads), "--threads");
            var sessionTimeout = TimeSpan.FromSeconds(Positive(parse.GetValue(timeout), "--timeout"));
            using var signals = new ShutdownSignals();
            LocalPoolRunner? pool = null;
            try
            {
                // Every session comes from this one client: the per-client limits would measure admission, not serving.
                var unlimited = new LocalPoolAccess(["--rate-limit", "0", "--concurrency-limit", "0"], new Dictionary<string, string>());
                var measured = await PoolUnderTestAsync(parse, target, modelFile, Positive(parse.GetValue(nodes), "--nodes"), signals, started => pool = started, unlimited);
                if (measured is not { } under) return ExitCodes.Interrupted;
                (target, var modelPath) = under;
                NativeRuntime.EnsureLoaded();
                var options = new LoadBenchmarkOptions
                {
                    GatewayUrl = target,
                    ModelPath = modelPath,
                    Concurrency = levels,
                    PromptTokens = promptTokens,
                    OutputTokens = outputTokens,
                    Rounds = roundCount,
                    Threads = threadCount,
                    ApiKey = parse.GetValue(apiKey),
                    SessionTimeout = sessionTimeout,
                    StallTimeout = TimeSpan.FromSeconds(Math.Max(10, sessionTimeout.TotalSeconds / 4)),
                };
                var result = await ProgressDisplay.RunAsync("load benchmark", progress =>
                    LoadBenchmark.RunAsync(options, new SynchronousProgress<string>(stage => progress.Report((stage, 0))), signals.Token));
                PrintLoad(result);
                WriteReport(parse.GetValue(report), "load",
                    new
                    {
                        options.GatewayUrl, options.ModelPath, options.Concurrency, options.PromptTokens, options.OutputTokens, options.Rounds, options.Threads,
                        SessionTimeoutSeconds = options.SessionTimeout.TotalSeconds, StallTimeoutSeconds = options.StallTimeout.TotalSeconds,
                        Nodes = pool is null ? (int?)null : parse.GetValue(nodes),
                    },
                    new
                    {
                        result.Model,
                        Ratios = "Potluck / llama.cpp: above 1 is better for tokens/s, below 1 for latencies",
                        Aggregate = "output tokens of a round / its wall time (every session starts at 0)",
                        Decode = "tokens after each session's first / mean (last token - first token)",
                        Levels = result.Levels.Select(l => new
                        {
                            Figures = l, l.AggregateRatio, l.DecodeRatio, l.TtftP50Ratio, l.TtftP95Ratio, l.ItlP50Ratio, l.ItlP95Ratio,
                        }),
                    });
                return result.Levels.Any(l => l.Errors > 0) ? ExitCodes.Failure : ExitCodes.Ok;
            }
            finally
            {
                if (pool is not null) await pool.DisposeAsync();
            }
        });
        return CliApplication.AddExamples(command,
            "potluck bench load",
            "potluck bench load --concurrency 1,8 --prompt 64 --tokens 64 --rounds 2 --report load.json",
            "potluck bench load --url http://pool.lan:8080 --model ./model.gguf --api-key \"$KEY\"");
    }

    private static void PrintLoad(LoadBenchmarkResult r)
    {
        foreach (var level in r.Levels)
        {
            var table = new Table().Border(TableBorder.Rounded)
                .Title($"[bold]{level.Concurrency} session(s) at once vs llama.cpp batched[/]: {Markup.Escape(r.Model)}, {r.PromptTokens}-token prompts, {r.OutputTokens} tokens, {r.Rounds} round(s), {r.Threads} llama.cpp threads")
                .Caption("median (min-max) over rounds; ratio = Potluck / llama.cpp (tokens/s: higher is better, latencies: lower is better); "
                    + "aggregate = all output tokens / round wall time, decode = tokens after the first / mean(last - first token)");
            table.AddColumn("");
            table.AddColumn(new TableColumn("Potluck").RightAligned());
            table.AddColumn(new TableColumn("llama.cpp").RightAligned());
            table.AddColumn(new TableColumn("Ratio").RightAligned());
            var p = level.Potluck;
            var l = level.LlamaCpp;
            table.AddRow("aggregate (tokens/s)", Figure(p.AggregateTokensPerSecond, "F1"), Figure(l.AggregateTokensPerSecond, "F1"), $"{level.AggregateRatio:F2}");
            table.AddRow("decode-only aggregate (tokens/s)", Figure(p.DecodeTokensPerSecond, "F1"), Figure(l.DecodeTokensPerSecond, "F1"), $"{level.DecodeRatio:F2}");
            table.AddRow("TTFT p50 (ms)", Figure(p.TtftP50Ms, "F1"), Figure(l.TtftP50Ms, "F1"), $"{level.TtftP50Ratio:F2}");
            table.AddRow("TTFT p95 (ms)", Figure(p.TtftP95Ms, "F1"), Figure(l.TtftP95Ms, "F1"), $"{level.TtftP95Ratio:F2}");
            table.AddRow("ITL p50 (ms)", Figure(p.ItlP50Ms, "F2"), Figure(l.ItlP50Ms, "F2"), $"{level.ItlP50Ratio:F2}");
            table.AddRow("ITL p95 (ms)", Figure(p.ItlP95Ms, "F2"), Figure(l.ItlP95Ms, "F2"), $"{level.ItlP95Ratio:F2}");
            table.AddRow("errors (sessions)", level.Errors == 0 ? $"0 of {level.Sessions}" : $"[red]{level.Errors} of {level.Sessions}[/]", "", "");
            AnsiConsole.Write(table);
            foreach (var error in level.ErrorSamples)
                Console.Error.WriteLine($"potluck: {level.Concurrency} session(s): {error}");
        }
    }

    private static int FreeLoopbackPort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static void PrintPool(PoolBenchmarkResult r)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"[bold]pool vs llama.cpp[/]: {Markup.Escape(r.Model)}, {r.PromptTokens}-token prompt, {r.DecodeTokens} tokens, {r.Runs} runs")
            .Caption("median (min-max); decode ratio = pool / llama.cpp tokens/s (higher is better), TTFT ratio = pool / llama.cpp (lower is better)");
        table.AddColumn("");
        table.AddColumn(new TableColumn("Pool").RightAligned());
        table.AddColumn(new TableColumn("llama.cpp").RightAligned());
        table.AddColumn(new TableColumn("Ratio").RightAligned());
        table.AddRow("time to first token (ms)", Figure(r.PoolTimeToFirstTokenMs, "F1"), Figure(r.ReferenceTimeToFirstTokenMs, "F1"), $"{r.TimeToFirstTokenRatio:F2}");
        table.AddRow("decode (tokens/s)", Figure(r.PoolDecodeTokensPerSecond, "F1"), Figure(r.ReferenceDecodeTokensPerSecond, "F1"), $"{r.DecodeRatio:F2}");
        AnsiConsole.Write(table);
    }

    private static string Figure(BenchFigure figure, string format) =>
        $"{figure.Median.ToString(format)} ({figure.Min.ToString(format)}-{figure.Max.ToString(format)})";

    private static void PrintEngine(IReadOnlyList<EngineBenchmarkResult> results, EngineBenchmarkOptions options)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"[bold]engine vs llama.cpp[/]: {options.PromptTokens}-token prefill, {options.DecodeTokens} decode, {options.Rounds} rounds, {options.Threads} threads, {options.Spans} span(s)")
            .Caption("ratio = llama.cpp time / Potluck time, median (min); 1.0 = parity");
        table.AddColumn("Type");
        foreach (var heading in new[] { "Prefill ms\nllama.cpp", "Prefill ms\nPotluck", "Prefill\nratio", "Decode ms/tok\nllama.cpp", "Decode ms/tok\nPotluck", "Decode\nratio" })
            table.AddColumn(new TableColumn(heading).RightAligned());
        table.AddColumn("Greedy\ntokens");
        foreach (var r in results)
        {
            table.AddRow(
                r.Type.ToString(),
                $"{r.LlamaCppPrefill.MedianMs:F1}",
                $"{r.SpanPrefill.MedianMs:F1}",
                $"{r.PrefillRatioMedian:F2} ({r.PrefillRatioMin:F2})",
                $"{r.LlamaCppDecodePerToken.MedianMs:F2}",
                $"{r.SpanDecodePerToken.MedianMs:F2}",
                $"{r.DecodeRatioMedian:F2} ({r.DecodeRatioMin:F2})",
                r.GreedyTokensMatch ? "[green]match[/]" : "[red]differ[/]");
        }
        AnsiConsole.Write(table);
    }

    private static void PrintHop(HopBenchmarkResult r)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"[bold]cost of one hop[/] ({r.Width}-wide {r.WireType} rows, {r.Pairs} plaintext/TLS pairs, medians over the pairs)")
            .Caption(Markup.Escape(r.Method));
        table.AddColumn("Rows");
        table.AddColumn(new TableColumn("Route").LeftAligned());
        table.AddColumn(new TableColumn("Plaintext").RightAligned());
        table.AddColumn(new TableColumn("TLS").RightAligned());
        table.AddColumn(new TableColumn("TLS adds (min)").RightAligned());
        foreach (var x in r.ByRows)
        {
            table.AddRow($"{x.Rows}", "one stage", $"{x.PlainSingleMedianMs:F3} ms", $"{x.TlsSingleMedianMs:F3} ms", $"{x.TlsSingleMedianMs - x.PlainSingleMedianMs:F3} ms");
            table.AddRow("", $"chain of {r.Stages}", $"{x.PlainChainMedianMs:F3} ms", $"{x.TlsChainMedianMs:F3} ms", $"{x.TlsChainMedianMs - x.PlainChainMedianMs:F3} ms");
            table.AddRow("", "[bold]per extra hop[/]", $"{x.PlainPerHopMedianMs:F3} ms", $"{x.TlsPerHopMedianMs:F3} ms",
                $"[bold]{x.TlsCostPerHopMedianMs:F3} ms[/] ({x.TlsCostPerHopMinMs:F3})");
        }
        AnsiConsole.Write(table);
        foreach (var x in r.ByRows)
            Console.WriteLine($"TLS cost per hop at {x.Rows} row(s): {x.TlsCostPerHopMedianMs:F3} ms median, {x.TlsCostPerHopMinMs:F3} ms min over {r.Pairs} pairs");
    }

    private static void WriteReport<TOptions, TResults>(FileInfo? file, string benchmark, TOptions options, TResults results)
    {
        if (file is null) return;
        var report = new
        {
            Benchmark = benchmark,
            CreatedUtc = DateTimeOffset.UtcNow,
            Machine = new
            {
                Environment.ProcessorCount,
                Os = RuntimeInformation.OSDescription,
                Architecture = RuntimeInformation.ProcessArchitecture.ToString(),
                GgmlVariant = NativeRuntime.Variant,
            },
            Options = options,
            Results = results,
        };
        file.Directory?.Create();
        File.WriteAllText(file.FullName, JsonSerializer.Serialize(report, ReportJson));
        Console.Error.WriteLine($"potluck: report written to {file.FullName}");
    }

    /// <summary>
    /// The pool a benchmark measures: the one at <paramref name="url"/> serving <paramref name="modelFile"/>, or a local
    /// pool of <paramref name="nodes"/> it starts (handed to <paramref name="started"/> at once, so the caller stops it
    /// even when starting fails). Null when interrupted while starting.
    /// </summary>
    private static async Task<(Uri Target, string ModelPath)?> PoolUnderTestAsync(ParseResult parse, Uri? url, FileInfo? modelFile, int nodes,
        ShutdownSignals signals, Action<LocalPoolRunner> started, LocalPoolAccess? access = null)
    {
        if (url is not null)
        {
            ModelCommands.InspectRunnableOrFail(modelFile!.FullName);
            return (url, modelFile.FullName);
        }
        var plan = ServeCommand.PlanPool(modelFile, nodes, 1, "127.0.0.1", FreeLoopbackPort(), fastFailureDetection: false);
        if (access is not null) plan = plan with { Access = access };
        var verbose = parse.GetValue(CliApplication.Verbose);
        var pool = new LocalPoolRunner(plan, TimeSpan.FromSeconds(120), verbose, echoChildren: verbose);
        started(pool);
        signals.Forced = pool.KillAll;
        Console.Error.WriteLine($"potluck: starting a local pool of {plan.Nodes.Count} node(s) at {plan.Url}");
        return await pool.StartAsync(signals.Token) ? (plan.Url, plan.ModelPath) : null;
    }

    private static int Positive(int value, string option) =>
        value >= 1 ? value : throw new UsageException($"{option} must be at least 1 (got {value})");
}
