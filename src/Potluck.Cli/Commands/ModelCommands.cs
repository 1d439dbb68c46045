using System.CommandLine;
using System.Text.Json;
using Potluck.Inference;
using Potluck.Inference.Engine;
using Potluck.Inference.Families;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;
using Potluck.Inference.Native;
using Potluck.Inference.Training;
using Spectre.Console;

namespace Potluck.Cli.Commands;

/// <summary>`potluck model inspect` and `potluck model create-demo`.</summary>
public static class ModelCommands
{
    public static Command Create()
    {
        var model = new Command("model", "Inspect GGUF model files and create the generated demo model");
        model.Subcommands.Add(CreateInspect());
        model.Subcommands.Add(CreateDemo());
        model.Subcommands.Add(CreateTest());
        model.Subcommands.Add(CreateTrainDemo());
        return CliApplication.AddExamples(model,
            "potluck model inspect ./Meta-Llama-3-8B-Instruct.Q4_K_M.gguf",
            "potluck model create-demo --output ./demo.gguf",
            "potluck model create-test --arch qwen3moe --type Q8_0",
            "potluck model train-demo --output ./models/potluck-demo.gguf");
    }

    private static Command CreateInspect()
    {
        var path = new Argument<FileInfo>("PATH") { Description = "The GGUF file to read (only its header and tensor index are read)" };
        var json = new Option<bool>("--json") { Description = "Print the summary as JSON instead of tables" };
        var command = new Command("inspect", "Show a GGUF model's architecture, sizes, quant types and layer count") { path, json };
        command.SetAction(parse =>
        {
            var file = parse.GetRequiredValue(path);
            var info = InspectOrFail(file.FullName);
            if (parse.GetValue(json)) PrintJson(info);
            else PrintTables(info);
            return ExitCodes.Ok;
        });
        return CliApplication.AddExamples(command,
            "potluck model inspect ./qwen2.5-7b-instruct-q8_0.gguf",
            "potluck model inspect ./model.gguf --json | jq .LayerCount");
    }

    private static Command CreateDemo()
    {
        var output = new Option<FileInfo?>("--output", "-o") { Description = "Also copy the generated file here (it is always cached under $POTLUCK_HOME/models)" };
        var type = new Option<GgmlType>("--type")
        {
            Description = "Weight type: F32, F16, Q8_0, Q4_0, Q4_K, Q6_K ...",
            DefaultValueFactory = _ => TestModelSpec.DemoWeightType,
        };
        var command = new Command("create-demo", "Write the deterministic generated demo model (random weights at a fixed seed; no download)")
        {
            output, type,
        };
        command.SetAction(parse =>
        {
            var path = EnsureDemoModel(parse.GetValue(type));
            var destination = parse.GetValue(output);
            if (destination is not null)
            {
                destination.Directory?.Create();
                File.Copy(path, destination.FullName, overwrite: true);
                path = destination.FullName;
            }
            Console.Out.WriteLine(path);
            return ExitCodes.Ok;
        });
        return CliApplication.AddExamples(command,
            "potluck model create-demo",
            "potluck model create-demo --type Q4_K --output ./demo-q4k.gguf");
    }

    /// <summary>
    /// A generated model of any family the generator writes (random weights at a fixed seed, quantized by
    /// llama.cpp): what the oracle tests use, at any size, for trying a family end to end or benchmarking it.
    /// </summary>
    private static Command CreateTest()
    {
        var arch = new Option<string>("--arch") { Description = $"Family: {string.Join(", ", TestModelSpec.Architectures)}", Required = true };
        var type = new Option<GgmlType>("--type") { Description = "Weight type: F32, F16, Q8_0, Q4_K, Q6_K ...", DefaultValueFactory = _ => GgmlType.Q8_0 };
        var width = new Option<int?>("--width") { Description = "Embedding width (default: the family's small test size)" };
        var layers = new Option<int?>("--layers") { Description = "Layer count" };
        var heads = new Option<int?>("--heads") { Description = "Attention heads (KV heads scale with them)" };
        var ff = new Option<int?>("--ff") { Description = "Dense feed-forward width" };
        var experts = new Option<int?>("--experts") { Description = "Experts per layer (expert families)" };
        var expertFf = new Option<int?>("--expert-ff") { Description = "Feed-forward width of one expert" };
        var context = new Option<int?>("--context") { Description = "Context length" };
        var seed = new Option<int?>("--seed") { Description = "Seed of the random weights" };
        var vocab = new Option<int?>("--vocab") { Description = "Vocabulary size (default: the minimal test vocabulary; 32000+ weighs the LM head like a real model)" };
        var output = new Option<FileInfo?>("--output", "-o") { Description = "Also copy the generated file here (it is always cached under $POTLUCK_HOME/models)" };
        var command = new Command("create-test", "Write a generated test model of a family (random weights at a fixed seed, quantized by llama.cpp; no download)")
        {
            arch, type, width, layers, heads, ff, experts, expertFf, context, seed, vocab, output,
        };
        command.SetAction(parse =>
        {
            TestModelSpec spec;
            try
            {
                spec = TestModelSpec.ForArchitecture(parse.GetRequiredValue(arch));
                var h = parse.GetValue(heads);
                spec = spec with
                {
                    EmbeddingLength = parse.GetValue(width) ?? spec.EmbeddingLength,
                    LayerCount = parse.GetValue(layers) ?? spec.LayerCount,
                    HeadCount = h ?? spec.HeadCount,
                    KvHeadCount = h is { } n ? Math.Max(1, n * spec.KvHeadCount / spec.HeadCount) : spec.KvHeadCount,
                    FeedForwardLength = parse.GetValue(ff) ?? spec.FeedForwardLength,
                    ExpertCount = parse.GetValue(experts) ?? spec.ExpertCount,
                    ExpertFeedForwardLength = parse.GetValue(expertFf) ?? spec.ExpertFeedForwardLength,
                    ContextLength = parse.GetValue(context) ?? spec.ContextLength,
                    Seed = parse.GetValue(seed) ?? spec.Seed,
                    VocabSize = parse.GetValue(vocab) ?? spec.VocabSize,
                };
                spec.Validate();
            }
            catch (ArgumentException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return ExitCodes.Usage;
            }
            NativeRuntime.EnsureLoaded();
            var t = parse.GetValue(type);
            var path = ProgressDisplay.Run($"{spec.Architecture} test model ({t})", progress =>
                TestModelGenerator.GetOrCreate(spec, t, PotluckPaths.ModelCache,
                    new SynchronousProgress<double>(fraction => progress.Report(("generating", fraction)))));
            var destination = parse.GetValue(output);
            if (destination is not null)
            {
                destination.Directory?.Create();
                File.Copy(path, destination.FullName, overwrite: true);
                path = destination.FullName;
            }
            Console.Out.WriteLine(path);
            return ExitCodes.Ok;
        });
        return CliApplication.AddExamples(command,
            "potluck model create-test --arch gemma3",
            "potluck model create-test --arch qwen3moe --width 1024 --layers 8 --experts 16 --expert-ff 512 --type Q8_0");
    }

    private static Command CreateTrainDemo()
    {
        var defaults = new DemoModelConfig();
        var output = new Option<FileInfo>("--output", "-o")
        {
            Description = "Where to write the trained Q8_0 model",
            DefaultValueFactory = _ => new FileInfo(Path.Combine("models", DemoModels.TrainedFileName)),
        };
        var corpus = new Option<DirectoryInfo>("--corpus")
        {
            Description = "Folder of fortune data files (Debian's `fortunes` package)",
            DefaultValueFactory = _ => new DirectoryInfo(FortuneCorpus.DefaultDirectory),
        };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps", DefaultValueFactory = _ => defaults.Steps };
        var threads = new Option<int>("--threads") { Description = "CPU threads (the result is reproducible for a fixed thread count)", DefaultValueFactory = _ => defaults.Threads };
        var seed = new Option<int>("--seed") { Description = "Seed of the initial weights, window sampling and chat prompts", DefaultValueFactory = _ => defaults.Seed };
        var stopAfter = new Option<int?>("--stop-after") { Description = "Stop after this many steps of the --steps schedule (reproduces that step's state exactly)" };
        var snapshotEvery = new Option<int>("--snapshot-every") { Description = "Also save a Q8_0 snapshot in the work folder every N steps (0: none)" };
        var workDir = new Option<DirectoryInfo?>("--work-dir") { Description = "Folder for the initial and F32 models (default: $POTLUCK_HOME/demo-training)" };
        var command = new Command("train-demo",
            "Train the demo model on the fortunes corpus with ggml's optimizer (fixed seed and step count; 15 minutes on 2 idle cores, 53 on a busy machine)")
        {
            output, corpus, steps, stopAfter, threads, seed, snapshotEvery, workDir,
        };
        command.SetAction(parse =>
        {
            var config = defaults with
            {
                Steps = parse.GetValue(steps),
                Threads = parse.GetValue(threads),
                Seed = parse.GetValue(seed),
            };
            config = config with { WarmupSteps = Math.Min(config.WarmupSteps, Math.Max(1, config.Steps / 10)) };
            try
            {
                config.Validate();
            }
            catch (ArgumentException e)
            {
                throw new UsageException(e.Message);
            }
            var work = parse.GetValue(workDir)?.FullName ?? Path.Combine(PotluckPaths.Home, "demo-training");
            var destination = parse.GetRequiredValue(output).FullName;
            var corpusDirectory = parse.GetRequiredValue(corpus).FullName;
            if (!Directory.Exists(corpusDirectory))
                throw new CannotLoadException($"fortune corpus not found at {corpusDirectory}: install it with `apt-get install fortunes`, or pass --corpus");
            NativeRuntime.EnsureLoaded();
            using var signals = new ShutdownSignals();
            var report = DemoTrainer.Train(config, corpusDirectory, destination, work,
                line => Console.Out.WriteLine($"[{DateTime.UtcNow:HH:mm:ss}] {line}"), parse.GetValue(stopAfter), parse.GetValue(snapshotEvery),
                signals.Token);
            Console.Out.WriteLine(
                $"held-out bits per byte: {report.HeldOutBitsPerByte:F3}; {report.TokensPerSecond:F0} tokens/s; {report.Duration.TotalMinutes:F1} min; {report.ModelPath}");
            return ExitCodes.Ok;
        });
        return CliApplication.AddExamples(command,
            "potluck model train-demo",
            "potluck model train-demo --steps 200 --output /tmp/smoke.gguf");
    }

    /// <summary>Reads the header and tensor index; a missing or unreadable file becomes one clear line (exit 1).</summary>
    /// <summary>The model's header and tensor index; a missing or unreadable file is <see cref="CannotLoadException"/> (exit 3).</summary>
    public static ModelInfo InspectOrFail(string path)
    {
        if (!File.Exists(path)) throw new CannotLoadException($"model file not found: {path}");
        NativeRuntime.EnsureLoaded();
        try
        {
            return GgufModel.Inspect(path);
        }
        catch (Exception error) when (error is not (HostExitException or OperationCanceledException or OutOfMemoryException))
        {
            throw new CannotLoadException($"cannot read model {path}: {error.Message}", error);
        }
    }

    /// <summary>Like <see cref="InspectOrFail"/>, and refuses in one line an architecture the engine does not run.</summary>
    public static ModelInfo InspectRunnableOrFail(string path)
    {
        var info = InspectOrFail(path);
        if (!info.IsSupported)
            throw new CannotLoadException($"cannot run model {path}: {new UnsupportedArchitectureException(info.Architecture, ModelFamilies.Supported).Message}");
        return info;
    }

    /// <summary>Returns the cached demo model for this weight type, generating it once with a progress bar.</summary>
    public static string EnsureDemoModel(GgmlType type)
    {
        NativeRuntime.EnsureLoaded();
        var cache = PotluckPaths.ModelCache;
        var cached = Path.Combine(cache, TestModelGenerator.FileName(TestModelSpec.Demo, type));
        if (File.Exists(cached)) return cached;
        Directory.CreateDirectory(cache);
        return ProgressDisplay.Run($"demo model ({type})", progress =>
            TestModelGenerator.GetOrCreate(TestModelSpec.Demo, type, cache,
                new SynchronousProgress<double>(fraction => progress.Report(("generating", fraction)))));
    }

    private static void PrintTables(ModelInfo info)
    {
        var summary = new Table().Border(TableBorder.Rounded).Title($"[bold]{Markup.Escape(Path.GetFileName(info.Path))}[/]");
        summary.AddColumn("Property");
        summary.AddColumn("Value");
        void Row(string name, string value) => summary.AddRow(Markup.Escape(name), Markup.Escape(value));
        Row("Architecture", info.IsSupported ? info.Architecture : $"{info.Architecture} (not supported by the engine; supported: {string.Join(", ", ModelFamilies.Supported)})");
        if (!string.IsNullOrEmpty(info.Name)) Row("Name", info.Name);
        Row("Model id", info.ModelId);
        Row("File size", FormatBytes(info.FileBytes));
        Row("Weight type", info.WeightType.ToString());
        Row("Layers", info.LayerCount.ToString());
        Row("Embedding length", info.EmbeddingLength.ToString());
        Row("Feed-forward length", info.FeedForwardLength.ToString());
        Row("Attention heads", $"{info.HeadCount} (KV {info.KvHeadCount}, head dim {info.HeadDim})");
        Row("Context length", info.ContextLength.ToString());
        Row("Vocabulary", info.VocabSize.ToString());
        Row("RoPE", $"{info.Rope}, base {info.RopeFreqBase:G}, scale {info.RopeFreqScale:G}{(info.HasRopeFreqFactors ? ", frequency factors" : "")}");
        Row("RMS norm eps", info.RmsNormEps.ToString("G"));
        Row("Sliding window", info.SlidingWindow?.ToString() ?? "none");
        Row("Tied embeddings", info.TiedEmbeddings ? "yes" : "no");
        if (!ReferenceEquals(info.Parameters, FamilyParameters.None)) Row("Family parameters", FamilyParametersText(info.Parameters));
        if (info.KvLayers.Count > 0) Row("KV cache", $"{FormatBytes(info.KvLayers.Sum(k => k.BytesPerToken))} per token (F16, all layers)");
        Row("Chat template", info.ChatTemplate is null ? "none" : $"{info.ChatTemplate.Length} characters");
        AnsiConsole.Write(summary);

        var byType = new Table().Border(TableBorder.Rounded).Title("[bold]Tensors by type[/]");
        byType.AddColumn("Type");
        byType.AddColumn(new TableColumn("Tensors").RightAligned());
        byType.AddColumn(new TableColumn("Bytes").RightAligned());
        byType.AddColumn(new TableColumn("Share").RightAligned());
        var totalBytes = Math.Max(1, info.Tensors.Sum(t => t.Bytes));
        foreach (var group in TensorsByType(info))
            byType.AddRow(group.Type.ToString(), group.Count.ToString(), FormatBytes(group.Bytes), $"{100.0 * group.Bytes / totalBytes:F1}%");
        byType.AddRow("[bold]total[/]", info.Tensors.Count.ToString(), FormatBytes(totalBytes), "100.0%");
        AnsiConsole.Write(byType);
    }

    private static void PrintJson(ModelInfo info)
    {
        var summary = new
        {
            info.Path,
            info.Architecture,
            info.Name,
            info.ModelId,
            info.FileBytes,
            WeightType = info.WeightType.ToString(),
            info.LayerCount,
            info.EmbeddingLength,
            info.FeedForwardLength,
            info.HeadCount,
            info.KvHeadCount,
            info.HeadDim,
            info.ContextLength,
            info.VocabSize,
            Rope = info.Rope.ToString(),
            info.RopeFreqBase,
            info.RopeFreqScale,
            info.HasRopeFreqFactors,
            info.RmsNormEps,
            info.SlidingWindow,
            info.TiedEmbeddings,
            info.IsSupported,
            FamilyParameters = ReferenceEquals(info.Parameters, FamilyParameters.None) ? (JsonElement?)null : JsonSerializer.SerializeToElement(info.Parameters, info.Parameters.GetType()),
            KvBytesPerToken = info.KvLayers.Sum(k => k.BytesPerToken),
            HasChatTemplate = info.ChatTemplate is not null,
            TensorCount = info.Tensors.Count,
            TensorsByType = TensorsByType(info).Select(g => new { Type = g.Type.ToString(), g.Count, g.Bytes }),
        };
        Console.Out.WriteLine(JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>"ExpertCount = 8, ..." from the family's parameter record (its generated ToString, without the type name and braces).</summary>
    private static string FamilyParametersText(FamilyParameters parameters)
    {
        var text = parameters.ToString();
        var open = text.IndexOf('{');
        return open < 0 ? text : text[(open + 1)..].TrimEnd('}', ' ').Trim();
    }

    private static IEnumerable<(GgmlType Type, int Count, long Bytes)> TensorsByType(ModelInfo info) =>
        info.Tensors
            .GroupBy(t => t.Type)
            .Select(g => (g.Key, g.Count(), g.Sum(t => t.Bytes)))
            .OrderByDescending(g => g.Item3);

    public static string FormatBytes(long bytes) => Potluck.Node.Joining.PoolJoiner.FormatBytes(bytes);
}
