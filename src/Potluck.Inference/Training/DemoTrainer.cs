using System.Diagnostics;
using System.Globalization;
using Potluck.Inference.Gguf;
using Potluck.Inference.Models;
using Potluck.Inference.Text;

namespace Potluck.Inference.Training;

/// <summary>What a training run measured.</summary>
public sealed record DemoTrainingReport(
    string ModelPath,
    string InitialModelPath,
    TimeSpan Duration,
    double TokensPerSecond,
    IReadOnlyList<(int Step, double Loss)> LossCurve,
    IReadOnlyList<(int Step, double BitsPerByte)> HeldOutCurve,
    double HeldOutBitsPerByte,
    double HeldOutNatsPerToken,
    int TrainingTokens,
    int HeldOutAnswerTokens,
    long HeldOutAnswerBytes,
    string VocabularyDigest);

/// <summary>
/// `potluck model train-demo`: learns the subword vocabulary from the fortunes corpus, writes the generated initial
/// model, trains it with ggml-opt for a fixed number of steps from a fixed seed, and saves the result at Q8_0.
/// Same config, corpus, thread count and CPU variant give the same file bit for bit (see docs/demo-model.md).
/// </summary>
public static class DemoTrainer
{
    /// <param name="stopAfter">
    /// Stop after this many steps of the <see cref="DemoModelConfig.Steps"/>-step schedule (null: run it all). The file is then
    /// what a full run holds at that step, so it reproduces as exactly as a full run.
    /// </param>
    /// <param name="cancellationToken">Checked before every step (Ctrl+C stops a run within one step).</param>
    /// <param name="snapshotEvery">Also save a Q8_0 snapshot in <paramref name="workDirectory"/> every this many steps (0: none).</param>
    public static DemoTrainingReport Train(DemoModelConfig config, string corpusDirectory, string outputPath, string workDirectory,
        Action<string> log, int? stopAfter = null, int snapshotEvery = 0, CancellationToken cancellationToken = default)
    {
        config.Validate();
        Directory.CreateDirectory(workDirectory);
        var started = Stopwatch.StartNew();
        log($"config: {config}");

        var corpus = FortuneCorpus.Load(corpusDirectory);
        log($"corpus: {corpus.Files.Count} files from {corpusDirectory}, {corpus.Training.Count} training entries " +
            $"({corpus.TrainingCharacters:N0} characters), {corpus.HeldOut.Count} held out");
        var vocabulary = SubwordVocabulary.Learn(corpus.Training, config.VocabSize);
        log($"vocabulary: {vocabulary.Size} entries, digest {vocabulary.Digest()} ({started.Elapsed.TotalSeconds:F1} s)");

        var initialPath = Path.Combine(workDirectory, "potluck-demo-initial.f32.gguf");
        DemoModelFile.Write(initialPath, config, vocabulary, description: DemoModelFile.InitialDescription);
        DemoTokens tokens;
        using (var tokenizer = Tokenizer.Load(initialPath)) tokens = DemoTokens.Build(tokenizer, corpus, config.Seed);
        var answerTokens = tokens.HeldOutIsAnswer.Count(a => a);
        log(string.Create(CultureInfo.InvariantCulture,
            $"tokens: {tokens.Training.Length:N0} training ({(double)corpus.TrainingCharacters / tokens.Training.Length:F2} characters each incl. chat framing), " +
            $"{tokens.HeldOut.Length:N0} held out ({answerTokens:N0} answer tokens, {tokens.HeldOutAnswerBytes:N0} bytes)"));

        var specs = DemoModelFile.Tensors(config);
        log($"parameters: {specs.Sum(s => s.Elements):N0}");
        using var graph = new TrainingGraph(config, specs, s =>
        {
            var data = new float[s.Elements];
            DemoModelFile.FillInitial(config, s, data);
            return data;
        });

        var heldOut = HeldOutBatches(config, tokens);
        var rng = new SplitMix64(SplitMix64.Derive(config.Seed, "windows"));
        var T = config.ContextLength;
        var window = new int[config.BatchWindows * (T + 1)];
        var lossCurve = new List<(int, double)>();
        var heldOutCurve = new List<(int, double)>();
        double lossSum = 0;
        var lossCount = 0;
        var training = Stopwatch.StartNew();
        var evalTime = TimeSpan.Zero;
        var steps = Math.Clamp(stopAfter ?? config.Steps, 1, config.Steps);
        if (steps < config.Steps) log($"stopping after step {steps} of the {config.Steps}-step schedule");
        for (var step = 0; step < steps; step++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            for (var b = 0; b < config.BatchWindows; b++)
            {
                var start = (int)(rng.NextUInt64() % (ulong)(tokens.Training.Length - T - 1));
                tokens.Training.AsSpan(start, T + 1).CopyTo(window.AsSpan(b * (T + 1)));
            }
            var loss = graph.TrainStep(step, window);
            if (!float.IsFinite(loss)) throw new EngineException($"training diverged at step {step}: loss {loss}");
            lossSum += loss;
            lossCount++;
            var done = step + 1;
            if (done % config.LogEvery == 0 || done == steps)
            {
                var mean = lossSum / lossCount;
                lossCurve.Add((done, mean));
                var trainSeconds = (training.Elapsed - evalTime).TotalSeconds;
                log(string.Create(CultureInfo.InvariantCulture,
                    $"step {done}/{config.Steps}: loss {mean:F4}, lr {config.LearningRateAt(step):G3}, " +
                    $"{(double)done * config.TokensPerStep / trainSeconds:F0} tokens/s, {training.Elapsed.TotalMinutes:F1} min"));
                lossSum = 0;
                lossCount = 0;
            }
            if (snapshotEvery > 0 && done % snapshotEvery == 0 && done != steps)
            {
                var snapshot = Path.Combine(workDirectory, $"potluck-demo.step{done}.gguf");
                var snapshotF32 = Path.Combine(workDirectory, "snapshot.f32.gguf");
                DemoModelFile.Write(snapshotF32, config, vocabulary, s => graph.Read(s.Name),
                    $"Potluck demo model: step {done} of {config}");
                TestModelGenerator.Quantize(snapshotF32, snapshot, GgmlType.Q8_0);
                File.Delete(snapshotF32);
                log($"snapshot {snapshot}");
            }
            if (config.EvalEvery > 0 && done % config.EvalEvery == 0 && done != steps)
            {
                var evalStart = training.Elapsed;
                var (bpb, _) = Evaluate(graph, heldOut, tokens.HeldOutAnswerBytes);
                evalTime += training.Elapsed - evalStart;
                heldOutCurve.Add((done, bpb));
                log(string.Create(CultureInfo.InvariantCulture, $"step {done}: held-out {bpb:F3} bits per byte"));
            }
        }
        var trainingSeconds = (training.Elapsed - evalTime).TotalSeconds;
        var tokensPerSecond = (double)steps * config.TokensPerStep / trainingSeconds;
        var (finalBpb, natsPerToken) = Evaluate(graph, heldOut, tokens.HeldOutAnswerBytes);
        heldOutCurve.Add((steps, finalBpb));
        log(string.Create(CultureInfo.InvariantCulture,
            $"trained {steps} steps in {training.Elapsed.TotalMinutes:F1} min ({tokensPerSecond:F0} tokens/s); " +
            $"held-out {finalBpb:F3} bits per byte ({natsPerToken:F3} nats per answer token)"));

        var f32Path = Path.Combine(workDirectory, "potluck-demo.f32.gguf");
        var stopped = steps < config.Steps ? $", stopped after step {steps}" : "";
        var description = string.Create(CultureInfo.InvariantCulture,
            $"Potluck demo model: trained by `potluck model train-demo` on Debian's fortunes ({config}{stopped}); held-out {finalBpb:F3} bits per byte");
        DemoModelFile.Write(f32Path, config, vocabulary, s => graph.Read(s.Name), description);
        var outputDirectory = Path.GetDirectoryName(Path.GetFullPath(outputPath));
        if (outputDirectory is not null) Directory.CreateDirectory(outputDirectory);
        TestModelGenerator.Quantize(f32Path, outputPath, GgmlType.Q8_0);
        log($"saved {outputPath} ({new FileInfo(outputPath).Length:N0} bytes, Q8_0) in {started.Elapsed.TotalMinutes:F1} min total");
        return new DemoTrainingReport(outputPath, initialPath, started.Elapsed, tokensPerSecond, lossCurve, heldOutCurve, finalBpb,
            natsPerToken, tokens.Training.Length, answerTokens, tokens.HeldOutAnswerBytes, vocabulary.Digest());
    }

    private sealed record HeldOutBatch(int[] Windows, bool[] Wanted);

    /// <summary>
    /// The held-out stream cut into consecutive windows of up to ContextLength + 1 tokens, overlapping by one, so each
    /// target is scored once; a target counts when it is an answer token (position 0 of a window never is a target).
    /// </summary>
    internal static IEnumerable<(int[] Tokens, bool[] Wanted)> HeldOutWindows(DemoModelConfig config, DemoTokens tokens)
    {
        var T = config.ContextLength;
        for (var start = 0; start + 1 < tokens.HeldOut.Length; start += T)
        {
            var length = Math.Min(T + 1, tokens.HeldOut.Length - start);
            var wanted = new bool[length];
            for (var i = 1; i < length; i++) wanted[i] = tokens.HeldOutIsAnswer[start + i];
            yield return (tokens.HeldOut.AsSpan(start, length).ToArray(), wanted);
        }
    }

    /// <summary>The held-out windows grouped into full batches (the last one padded with windows that score nothing).</summary>
    private static List<HeldOutBatch> HeldOutBatches(DemoModelConfig config, DemoTokens tokens)
    {
        var T = config.ContextLength;
        var batches = new List<HeldOutBatch>();
        var windows = new int[config.BatchWindows * (T + 1)];
        var wanted = new bool[windows.Length];
        var filled = 0;
        foreach (var (w, want) in HeldOutWindows(config, tokens))
        {
            w.CopyTo(windows.AsSpan(filled * (T + 1)));
            want.CopyTo(wanted.AsSpan(filled * (T + 1)));
            if (++filled == config.BatchWindows)
            {
                batches.Add(new HeldOutBatch(windows, wanted));
                windows = new int[windows.Length];
                wanted = new bool[wanted.Length];
                filled = 0;
            }
        }
        if (filled > 0) batches.Add(new HeldOutBatch(windows, wanted));
        return batches;
    }

    private static (double BitsPerByte, double NatsPerToken) Evaluate(TrainingGraph graph, List<HeldOutBatch> batches, long bytes)
    {
        double nats = 0;
        long rows = 0;
        foreach (var batch in batches)
        {
            var (n, r) = graph.Evaluate(batch.Windows, batch.Wanted);
            nats += n;
            rows += r;
        }
        return (nats / Math.Log(2) / bytes, nats / Math.Max(1, rows));
    }
}
