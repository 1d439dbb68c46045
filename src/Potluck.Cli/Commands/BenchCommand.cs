using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Serialization;
using Potluck.Protocol.V1;
using Potluck.Gateway.Bench;
using Potluck.Reference;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;
using Potluck.Node.Bench;
using Spectre.Console;

namespace Potluck.Cli.Commands;

/// <summary>`potluck bench engine|hop|pool`: side-by-side benchmarks with ratio tables and a JSON report.</summary>
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
        return CliApplication.AddExamples(bench,
            "potluck bench engine --report bench-engine.json",
            "potluck bench hop --steps 500");
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

    private static int[] ParseRows(string? text)
    {
        var parts = (text ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw new UsageException("--rows needs at least one row count");
        var result = new int[parts.Length];
        for (var i = 0; i < parts.Length; i++)
            result[i] = int.TryParse(parts[i], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) && n is >= 1 and <= 4096
                ? n : throw new UsageException($"--rows: '{parts[i]}' is not a row count in [1, 4096]");
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
                string modelPath;
                if (target is null)
                {
                    var plan = ServeCommand.PlanPool(modelFile, Positive(parse.GetValue(nodes), "--nodes"), 1, "127.0.0.1", FreeLoopbackPort(), fastFailureDetection: false);
                    pool = new LocalPoolRunner(plan, TimeSpan.FromSeconds(120), parse.GetValue(CliApplication.Verbose), echoChildren: parse.GetValue(CliApplication.Verbose));
                    signals.Forced = pool.KillAll;
                    Console.Error.WriteLine($"potluck: starting a local pool of {plan.Nodes.Count} node(s) at {plan.Url}");
                    if (!await pool.StartAsync(signals.Token)) return ExitCodes.Interrupted;
                    target = plan.Url;
                    modelPath = plan.ModelPath;
                }
                else
                {
                    modelPath = modelFile!.FullName;
                    ModelCommands.InspectRunnableOrFail(modelPath);
                }
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

    private static int Positive(int value, string option) =>
        value >= 1 ? value : throw new UsageException($"{option} must be at least 1 (got {value})");
}
