using Potluck.Inference.Gguf;

namespace Potluck.Inference.Families;

/// <summary>The one registry of architectures the engine runs, keyed by <c>general.architecture</c>.</summary>
public static class ModelFamilies
{
    private static readonly ModelFamily[] All =
    [
        // Mixtral is "llama" with ffn_gate_inp: the llama family picks the expert feed-forward per layer.
        new LlamaFamily("llama", RopeKind.Normal),
        // llama.cpp has no "mistral" architecture; Potluck accepts the name for llama files with Mistral's keys.
        new LlamaFamily("mistral", RopeKind.Normal),
        new LlamaFamily("qwen2", RopeKind.NeoX),
        new LlamaFamily("qwen3", RopeKind.NeoX, requireQkNorm: true),
        new GptOssFamily(),
        new QwenMoeFamily("qwen3moe"),
        new QwenMoeFamily("qwen2moe"),
        new Gemma3Family(),
        new Phi3Family(),
        new DeepSeek2Family(),
    ];

    private static readonly Dictionary<string, ModelFamily> ByArchitecture =
        All.ToDictionary(f => f.Architecture, StringComparer.Ordinal);

    /// <summary>Architecture strings the engine runs, in registry order.</summary>
    public static IReadOnlyList<string> Supported { get; } = All.Select(f => f.Architecture).ToArray();

    public static ModelFamily? Find(string architecture) => ByArchitecture.GetValueOrDefault(architecture);
}
