namespace Potluck.Inference.Text;

/// <summary>
/// A GBNF grammar that constrains sampling (llama.cpp's grammar sampler). Lazy when any trigger is given: the
/// grammar is inactive until the output matches one of <see cref="TriggerPatterns"/> (regexes over the generated
/// text, llama.cpp's grammar_lazy_patterns) or a token in <see cref="TriggerTokens"/> is sampled; from then on the
/// text from the trigger on must match the grammar, so a lazy grammar's root has to begin with the trigger itself.
/// </summary>
public sealed record GrammarSpec(string Gbnf, string Root, IReadOnlyList<string> TriggerPatterns, IReadOnlyList<int> TriggerTokens)
{
    /// <summary>An eager grammar starting at <paramref name="root"/>.</summary>
    public GrammarSpec(string gbnf, string root = "root") : this(gbnf, root, [], []) { }

    /// <summary>Longest grammar text accepted here; the gateway's converters cap well below this.</summary>
    public const int MaxGbnfChars = 1 << 20;

    // Far above a normal step (well under a millisecond on the test vocabulary) so a busy machine or a GC pause does
    // not fail requests, yet it bounds a grammar whose matcher blows up.
    public static TimeSpan DefaultStepBudget { get; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Most time the grammar may take to constrain one token (both grammar passes of a step together); a step over
    /// it throws <see cref="GrammarBudgetExceededException"/>, so a pathological grammar cannot stall a session.
    /// </summary>
    public TimeSpan StepBudget { get; init; } = DefaultStepBudget;

    public bool IsLazy => TriggerPatterns.Count > 0 || TriggerTokens.Count > 0;

    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(Gbnf)) throw new ArgumentException("grammar text is empty");
        if (Gbnf.Length > MaxGbnfChars) throw new ArgumentException($"grammar text is {Gbnf.Length} chars, more than {MaxGbnfChars}");
        if (Gbnf.Contains('\0')) throw new ArgumentException("grammar text contains a NUL character");
        if (string.IsNullOrWhiteSpace(Root)) throw new ArgumentException("grammar root rule name is empty");
        ArgumentNullException.ThrowIfNull(TriggerPatterns);
        ArgumentNullException.ThrowIfNull(TriggerTokens);
        foreach (var pattern in TriggerPatterns)
            if (string.IsNullOrEmpty(pattern) || pattern.Contains('\0')) throw new ArgumentException("grammar trigger pattern is empty or contains NUL");
        if (StepBudget <= TimeSpan.Zero) throw new ArgumentException($"grammar step budget must be > 0, got {StepBudget}");
    }
}

/// <summary>llama.cpp refused the grammar (syntax error, undefined rule, left recursion, missing root).</summary>
public sealed class GrammarException(string message, Exception? inner = null) : EngineException(message, inner);

/// <summary>One sampling step spent longer in the grammar than <see cref="GrammarSpec.StepBudget"/>.</summary>
public sealed class GrammarBudgetExceededException(TimeSpan spent, TimeSpan budget)
    : EngineException($"the grammar took {spent.TotalMilliseconds:F1} ms to constrain one token, over the {budget.TotalMilliseconds:F0} ms budget")
{
    public TimeSpan Spent { get; } = spent;
    public TimeSpan Budget { get; } = budget;
}
