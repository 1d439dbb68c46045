namespace Potluck.Inference.Text;

/// <summary>
/// How the next token is chosen. Defaults are llama.cpp's (common_params_sampling). Temperature 0 means greedy.
/// Neutral values switch a stage off: TopK 0, TopP 1, MinP 0, RepeatPenalty 1, Frequency/PresencePenalty 0.
/// </summary>
public sealed record SamplingOptions
{
    public float Temperature { get; init; } = 0.8f;
    public int TopK { get; init; } = 40;
    public float TopP { get; init; } = 0.95f;
    public float MinP { get; init; } = 0.05f;
    public float RepeatPenalty { get; init; } = 1.0f;
    public float FrequencyPenalty { get; init; }
    public float PresencePenalty { get; init; }
    /// <summary>How many recent tokens the penalties look at; -1 means the whole context.</summary>
    public int PenaltyLastN { get; init; } = 64;
    /// <summary>Seed of the distribution sampler's RNG. The gateway must pick and store one so a session can be replayed.</summary>
    public uint Seed { get; init; }
    /// <summary>Constrains every sampled token to the grammar; null for free text.</summary>
    public GrammarSpec? Grammar { get; init; }

    /// <summary>Deterministic argmax with no penalties.</summary>
    public static SamplingOptions Greedy { get; } = new() { Temperature = 0f, TopK = 0, TopP = 1f, MinP = 0f };

    public bool IsGreedy => Temperature <= 0f;

    public void Validate()
    {
        if (!float.IsFinite(Temperature) || Temperature < 0) throw new ArgumentException($"temperature must be finite and >= 0, got {Temperature}");
        if (TopK < 0) throw new ArgumentException($"top_k must be >= 0, got {TopK}");
        if (!(TopP is > 0f and <= 1f)) throw new ArgumentException($"top_p must be in (0, 1], got {TopP}");
        if (!(MinP is >= 0f and <= 1f)) throw new ArgumentException($"min_p must be in [0, 1], got {MinP}");
        if (!float.IsFinite(RepeatPenalty) || RepeatPenalty <= 0) throw new ArgumentException($"repeat penalty must be > 0, got {RepeatPenalty}");
        if (!float.IsFinite(FrequencyPenalty) || !float.IsFinite(PresencePenalty)) throw new ArgumentException("frequency and presence penalties must be finite");
        if (PenaltyLastN < -1) throw new ArgumentException($"penalty_last_n must be >= -1, got {PenaltyLastN}");
        Grammar?.Validate();
    }
}
