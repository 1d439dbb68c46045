using Potluck.Protocol.V1;

namespace Potluck.Node.Hops;

/// <summary>
/// The last few answers of one session's stream, by step id: a caller that repeats a step (it did not see the answer)
/// gets the same answer again, marked replayed, and the step is never applied twice.
/// </summary>
internal sealed class ReplayCache
{
    public const int Size = 4;
    private readonly StepResult?[] _results = new StepResult?[Size];

    public void Remember(StepResult result) => _results[(int)(result.StepId % Size)] = result;

    public bool TryReplay(ulong stepId, out StepResult result)
    {
        var cached = _results[(int)(stepId % Size)];
        if (cached is not null && cached.StepId == stepId)
        {
            result = cached.Clone();
            result.Replayed = true;
            return true;
        }
        result = null!;
        return false;
    }
}
