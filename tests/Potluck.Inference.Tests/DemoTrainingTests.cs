using System.Text;
using Potluck.Inference.Engine;
using Potluck.Inference.Native;
using Potluck.Inference.Text;
using Potluck.Inference.Training;

namespace Potluck.Inference.Tests;

/// <summary>
/// The demo trainer on a tiny model and a small synthetic corpus in fortune format (seconds, not the real run):
/// the training graph's held-out loss equals the engine's inference of the saved file, and a run reproduces bit for bit.
/// </summary>
public sealed class DemoTrainingTests : IDisposable
{
    private static readonly DemoModelConfig Tiny = new()
    {
        EmbeddingLength = 64,
        LayerCount = 2,
        HeadCount = 4,
        FeedForwardLength = 128,
        VocabSize = 512,
        ContextLength = 32,
        BatchWindows = 2,
        Steps = 40,
        WarmupSteps = 5,
        LearningRate = 3e-3f,
        EvalEvery = 0,
        LogEvery = 20,
        Threads = 2,
    };

    private readonly string _root = Directory.CreateTempSubdirectory("potluck-demo-train-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    private string WriteCorpus()
    {
        var dir = Path.Combine(_root, "corpus");
        Directory.CreateDirectory(dir);
        string[] subjects = ["A friend", "The cat", "Every fool", "A wise man", "The river", "Time", "Money", "A small dog"];
        string[] verbs = ["knows", "finds", "keeps", "loses", "follows", "forgets", "remembers", "waits for"];
        string[] objects = ["the road home.", "a better day.", "the quiet night.", "what is true.", "the last word.", "an open door."];
        var text = new StringBuilder();
        var n = 0;
        foreach (var s in subjects)
            foreach (var v in verbs)
                foreach (var o in objects)
                {
                    text.Append($"{s} {v} {o}\n\t\t-- Proverb {n++ % 7}\n%\n");
                }
        File.WriteAllText(Path.Combine(dir, "proverbs"), text.ToString());
        File.WriteAllText(Path.Combine(dir, "proverbs.dat"), "binary index files are skipped");
        return dir;
    }

    [Fact]
    public void HeldOutLossOfTheTrainingGraphMatchesTheEngineOnTheSavedFile()
    {
        var corpusDir = WriteCorpus();
        var work = Path.Combine(_root, "work");
        var report = DemoTrainer.Train(Tiny, corpusDir, Path.Combine(_root, "tiny.gguf"), work, _ => { });
        Assert.True(report.HeldOutNatsPerToken < Math.Log(Tiny.VocabSize) - 1, $"the tiny run did not learn: {report.HeldOutNatsPerToken}");

        var f32 = Path.Combine(work, "potluck-demo.f32.gguf");
        var corpus = FortuneCorpus.Load(corpusDir);
        DemoTokens tokens;
        using (var tokenizer = Tokenizer.Load(report.InitialModelPath)) tokens = DemoTokens.Build(tokenizer, corpus, Tiny.Seed);

        NativeRuntime.EnsureLoaded();
        using var model = GgufModel.Open(f32);
        using var head = new ModelHead(model, threads: 2);
        using var span = new LayerSpan(model, 0, Tiny.LayerCount, new SpanOptions { Threads = 2 });
        using var pipeline = new LocalPipeline(head, [span]);
        var logits = new float[Tiny.VocabSize];
        double nats = 0;
        var rows = 0;
        var session = 0;
        foreach (var (window, wanted) in DemoTrainer.HeldOutWindows(Tiny, tokens))
        {
            var id = $"w{session++}";
            pipeline.OpenSession(id, window.Length - 1);
            for (var i = 0; i + 1 < window.Length; i++)
            {
                pipeline.Evaluate(id, i, window.AsSpan(i, 1), logits);
                if (!wanted[i + 1]) continue;
                var max = logits.Max();
                var sum = logits.Sum(l => Math.Exp(l - max));
                nats += max + Math.Log(sum) - logits[window[i + 1]];
                rows++;
            }
            pipeline.CloseSession(id);
        }
        var engine = nats / rows;
        // The engine runs flash attention over an F16 KV cache; training runs F32 soft_max attention.
        Assert.True(Math.Abs(engine - report.HeldOutNatsPerToken) < 0.01,
            $"engine {engine:F5} nats per answer token, training graph {report.HeldOutNatsPerToken:F5}");
    }

    [Fact]
    public void TheInitialModelIsRegeneratedFromTheTrainedFileAlone()
    {
        var corpusDir = WriteCorpus();
        var report = DemoTrainer.Train(Tiny with { Steps = 5 }, corpusDir, Path.Combine(_root, "t.gguf"), Path.Combine(_root, "wt"), _ => { });
        var again = Path.Combine(_root, "initial-again.gguf");
        DemoModelFile.WriteInitialFrom(report.ModelPath, again, Tiny with { Steps = 5 });
        Assert.Equal(File.ReadAllBytes(report.InitialModelPath), File.ReadAllBytes(again));
    }

    [Fact]
    public void ATrainingRunReproducesBitForBit()
    {
        var corpusDir = WriteCorpus();
        var first = DemoTrainer.Train(Tiny with { Steps = 15 }, corpusDir, Path.Combine(_root, "a.gguf"), Path.Combine(_root, "wa"), _ => { });
        var second = DemoTrainer.Train(Tiny with { Steps = 15 }, corpusDir, Path.Combine(_root, "b.gguf"), Path.Combine(_root, "wb"), _ => { });
        Assert.Equal(first.HeldOutBitsPerByte, second.HeldOutBitsPerByte);
        Assert.Equal(File.ReadAllBytes(first.ModelPath), File.ReadAllBytes(second.ModelPath));
    }
}
