using System.Globalization;

namespace Potluck.Inference.Training;

/// <summary>
/// Hyperparameters of the trained demo model and of the run that trains it. The defaults are what
/// `potluck model train-demo` uses to reproduce the committed file; change one and the result changes.
/// </summary>
public sealed record DemoModelConfig
{
    public int EmbeddingLength { get; init; } = 256;
    public int LayerCount { get; init; } = 4;
    public int HeadCount { get; init; } = 8;
    public int FeedForwardLength { get; init; } = 768;
    public int VocabSize { get; init; } = 1024;
    /// <summary>Training window, and the context length written to the file (RoPE is trained on these positions only).</summary>
    public int ContextLength { get; init; } = 512;
    public float RmsNormEps { get; init; } = 1e-5f;
    public float RopeFreqBase { get; init; } = 10000f;

    /// <summary>Seed of the initial weights, of the window sampler and of the chat prompts given to each entry.</summary>
    public int Seed { get; init; } = 17;
    /// <summary>Standard deviation of the initial weights (the residual projections are scaled by 1/√(2·layers)).</summary>
    public float InitScale { get; init; } = 0.02f;
    /// <summary>Windows of <see cref="ContextLength"/> tokens per optimizer step.</summary>
    public int BatchWindows { get; init; } = 2;
    public int Steps { get; init; } = 1600;
    public int WarmupSteps { get; init; } = 100;
    public float LearningRate { get; init; } = 2e-3f;
    public float MinLearningRate { get; init; } = 1e-4f;
    public float WeightDecay { get; init; } = 0.01f;
    public int Threads { get; init; } = 2;
    /// <summary>Held-out evaluation every this many steps (0: only at the end).</summary>
    public int EvalEvery { get; init; } = 400;
    /// <summary>Mean training loss is logged over this many steps.</summary>
    public int LogEvery { get; init; } = 50;

    public int HeadDim => EmbeddingLength / HeadCount;
    public int TokensPerStep => BatchWindows * ContextLength;

    public void Validate()
    {
        if (EmbeddingLength <= 0 || LayerCount <= 0 || HeadCount <= 0 || FeedForwardLength <= 0 || ContextLength <= 1)
            throw new ArgumentException("model dimensions must be positive");
        if (EmbeddingLength % HeadCount != 0 || HeadDim % 2 != 0)
            throw new ArgumentException($"EmbeddingLength {EmbeddingLength} must split into {HeadCount} heads of an even size");
        if (EmbeddingLength % 32 != 0 || FeedForwardLength % 32 != 0)
            throw new ArgumentException("Q8_0 needs row widths that are multiples of 32");
        if (VocabSize < 512) throw new ArgumentException("the vocabulary needs room for 261 special and byte tokens plus characters and pieces");
        if (Steps <= 0 || BatchWindows <= 0 || Threads <= 0) throw new ArgumentException("steps, batch and threads must be positive");
        if (!(LearningRate > 0) || !(MinLearningRate > 0)) throw new ArgumentException("learning rates must be positive (ggml_opt_eval asserts it)");
    }

    /// <summary>Learning rate of step <paramref name="step"/> (0-based): linear warm-up, then cosine decay to the minimum.</summary>
    public float LearningRateAt(int step)
    {
        if (step < WarmupSteps) return LearningRate * (step + 1) / WarmupSteps;
        var progress = (double)(step - WarmupSteps) / Math.Max(1, Steps - WarmupSteps);
        return (float)(MinLearningRate + 0.5 * (LearningRate - MinLearningRate) * (1 + Math.Cos(Math.PI * Math.Min(1, progress))));
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{LayerCount} layers, width {EmbeddingLength}, {HeadCount} heads, FF {FeedForwardLength}, vocab {VocabSize}, context {ContextLength}; " +
        $"seed {Seed}, {Steps} steps of {TokensPerStep} tokens, AdamW {LearningRate:G3} (warm-up {WarmupSteps}, cosine to {MinLearningRate:G3}), {Threads} threads");
}
