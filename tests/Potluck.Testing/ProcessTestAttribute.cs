using Xunit.Abstractions;
using Xunit.Sdk;

namespace Potluck.Testing;

/// <summary>
/// Marks a test class or test as a process/integration test (trait Category=Process): it starts processes, silos,
/// servers, containers or browsers. `dotnet test --filter "Category!=Process"` runs only the fast unit tests.
/// </summary>
[TraitDiscoverer("Potluck.Testing.ProcessTestDiscoverer", "Potluck.Testing")]
[AttributeUsage(AttributeTargets.Class | AttributeTargets.Method, AllowMultiple = false)]
public sealed class ProcessTestAttribute : Attribute, ITraitAttribute
{
    public const string Category = "Category";
    public const string Process = "Process";
}

/// <summary>Turns <see cref="ProcessTestAttribute"/> into the Category=Process trait.</summary>
public sealed class ProcessTestDiscoverer : ITraitDiscoverer
{
    public IEnumerable<KeyValuePair<string, string>> GetTraits(IAttributeInfo traitAttribute) =>
        [new(ProcessTestAttribute.Category, ProcessTestAttribute.Process)];
}
