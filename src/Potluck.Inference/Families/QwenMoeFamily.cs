using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;

namespace Potluck.Inference.Families;

/// <summary>
/// Qwen mixture-of-experts decoders: qwen3moe (Qwen3 attention with per-head Q/K norms; softmax routing with
/// normalized weights) and qwen2moe (Qwen2 attention with Q/K/V biases; softmax routing, weights not normalized,
/// plus a shared expert scaled by sigmoid(ffn_gate_inp_shexp · x)). Every layer is an expert layer, as llama.cpp loads them.
/// </summary>
internal sealed class QwenMoeFamily(string architecture) : ModelFamily
{
    private bool IsQwen3 => architecture == "qwen3moe";

    public override string Architecture => architecture;
    public override RopeKind Rope => RopeKind.NeoX;

    internal override FamilyParameters ReadParameters(GgufMetadata metadata, ModelInfo common) => ExpertParameters.Read(metadata, common);

    internal override void Validate(ModelInfo info)
    {
        if (info.Parameters is not ExpertParameters experts)
            throw new GgufFormatException(info.Path, $"{architecture} needs expert hyper-parameters");
        experts.Validate(info);
    }

    internal override ILayerBlock BindLayer(GgufModel model, int layer) => LlamaBlock.Bind(model, layer, requireQkNorm: IsQwen3, FeedForward);

    private IFeedForward FeedForward(GgufModel model, int layer)
    {
        var info = model.Info;
        var e = (ExpertParameters)info.Parameters;
        var settings = new MoeSettings(e.ExpertCount, e.ExpertUsedCount, ExpertGating.Softmax, NormalizeWeights: IsQwen3);
        var shared = IsQwen3 ? null : SharedExpert.Bind(model, layer, info.EmbeddingLength, e.SharedExpertFeedForwardLength, gated: true);
        return MoeFeedForward.Bind(model, layer, info.EmbeddingLength, e.ExpertFeedForwardLength, settings, shared);
    }
}
