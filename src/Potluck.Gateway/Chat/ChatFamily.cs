namespace Potluck.Gateway.Chat;

/// <summary>How a model writes tools, tool calls and reasoning, recognised from its chat template.</summary>
public enum ChatFamily
{
    /// <summary>None of the known families: tools go into a system block and calls are a JSON object (docs/api.md).</summary>
    Generic,
    /// <summary>Hermes 2 Pro / Hermes 3 / Qwen 2.5 / Qwen 3: &lt;tool_call&gt;{json}&lt;/tool_call&gt; in ChatML.</summary>
    Hermes,
    /// <summary>Llama 3.1-3.3: a bare {"name", "parameters"} object, tool results in the ipython role.</summary>
    Llama3,
    /// <summary>Mistral (Nemo style): [AVAILABLE_TOOLS], [TOOL_CALLS][...], [TOOL_RESULTS].</summary>
    Mistral,
    /// <summary>gpt-oss harmony: &lt;|channel|&gt; analysis/commentary/final, calls to=functions.name ... &lt;|call|&gt;.</summary>
    GptOss,
    /// <summary>DeepSeek R1 / V3: &lt;｜tool▁calls▁begin｜&gt; blocks and &lt;think&gt; reasoning.</summary>
    DeepSeek,
}

/// <summary>What the template says about a family, found by looking for each family's markers in its text.</summary>
public sealed record ChatTemplateTraits(ChatFamily Family, bool Thinking, bool QwenDefaultSystem, bool GenerationPromptOpensThink)
{
    /// <summary>Recognises the family of a GGUF chat template (tokenizer.chat_template); null means Generic.</summary>
    public static ChatTemplateTraits Detect(string? template)
    {
        template ??= "";
        // Order matters: a Hermes template mentions no harmony markers, but DeepSeek-R1 distills of Qwen mention <think>.
        ChatFamily family;
        if (template.Contains("<|channel|>", StringComparison.Ordinal)) family = ChatFamily.GptOss;
        else if (template.Contains("tool▁calls▁begin", StringComparison.Ordinal) || template.Contains("<｜Assistant｜>", StringComparison.Ordinal))
            family = ChatFamily.DeepSeek;
        else if (template.Contains("[TOOL_CALLS]", StringComparison.Ordinal)) family = ChatFamily.Mistral;
        else if (template.Contains("<tool_call>", StringComparison.Ordinal)) family = ChatFamily.Hermes;
        else if (template.Contains("<|start_header_id|>ipython<|end_header_id|>", StringComparison.Ordinal)
                 || (template.Contains("<|start_header_id|>", StringComparison.Ordinal) && template.Contains("ipython", StringComparison.Ordinal)))
            family = ChatFamily.Llama3;
        else family = ChatFamily.Generic;
        // DeepSeek-R1 templates may only strip "</think>" from history; the models still write <think> blocks.
        var thinking = family is ChatFamily.GptOss or ChatFamily.DeepSeek || template.Contains("<think>", StringComparison.Ordinal);
        // DeepSeek-R1 (and some Qwen3 finetunes) end the generation prompt with "<think>\n": output starts inside reasoning.
        var opensThink = family == ChatFamily.DeepSeek && template.Contains("<｜Assistant｜><think>", StringComparison.Ordinal);
        return new ChatTemplateTraits(family, thinking, template.Contains("You are Qwen, created by Alibaba Cloud", StringComparison.Ordinal), opensThink);
    }

    private static Tuple<string?, ChatTemplateTraits>? _last;

    /// <summary><see cref="Detect"/> with a one-entry cache: a gateway serves one model, so one template.</summary>
    public static ChatTemplateTraits For(string? template)
    {
        var last = _last;
        if (last is not null && ReferenceEquals(last.Item1, template)) return last.Item2;
        var traits = Detect(template);
        _last = Tuple.Create(template, traits);
        return traits;
    }
}
