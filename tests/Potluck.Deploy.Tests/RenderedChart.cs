using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.Serialization;

namespace Potluck.Deploy.Tests;

/// <summary>The objects `helm template` rendered, parsed from YAML into plain dictionaries and lists.</summary>
public sealed class RenderedChart
{
    public IReadOnlyList<Dictionary<object, object>> Objects { get; }

    private RenderedChart(IReadOnlyList<Dictionary<object, object>> objects) => Objects = objects;

    public const string ChartDirectory = "helm/potluck";

    /// <summary>Runs `helm template` with the given values (YAML text written to a temp file) and parses the result.</summary>
    public static RenderedChart Render(string releaseName, string? valuesYaml = null)
    {
        var result = RunTemplate(releaseName, valuesYaml);
        if (result.ExitCode != 0)
            throw new InvalidOperationException($"helm template failed ({result.ExitCode}):\n{result.Tail()}");
        return Parse(result.Output);
    }

    public static ProcessResult RunTemplate(string releaseName, string? valuesYaml)
    {
        var valuesFile = valuesYaml is null ? null : WriteValues(valuesYaml);
        try
        {
            var args = $"template {releaseName} {ChartDirectory} --namespace potluck-test" + (valuesFile is null ? "" : $" --values {valuesFile}");
            return ProcessRunner.Run("helm", args, TimeSpan.FromSeconds(60));
        }
        finally
        {
            if (valuesFile is not null) File.Delete(valuesFile);
        }
    }

    public static string WriteValues(string valuesYaml)
    {
        var path = Path.Combine(Path.GetTempPath(), $"potluck-values-{Guid.NewGuid():N}.yaml");
        File.WriteAllText(path, valuesYaml);
        return path;
    }

    public static RenderedChart Parse(string yaml)
    {
        var deserializer = new DeserializerBuilder().Build();
        var parser = new Parser(new StringReader(yaml));
        parser.Consume<StreamStart>();
        var objects = new List<Dictionary<object, object>>();
        while (parser.Accept<DocumentStart>(out _))
        {
            // An empty document (a template whose condition was false) deserializes to null.
            if (deserializer.Deserialize<Dictionary<object, object>?>(parser) is { Count: > 0 } doc) objects.Add(doc);
        }
        return new RenderedChart(objects);
    }

    public Dictionary<object, object>? Find(string kind, string name) =>
        Objects.FirstOrDefault(o => Str(o, "kind") == kind && Str(o, "metadata.name") == name);

    public Dictionary<object, object> Get(string kind, string name) =>
        Find(kind, name) ?? throw new Xunit.Sdk.XunitException(
            $"no {kind} named {name}; rendered: {string.Join(", ", Objects.Select(o => $"{Str(o, "kind")}/{Str(o, "metadata.name")}"))}");

    public IEnumerable<Dictionary<object, object>> OfKind(string kind) => Objects.Where(o => Str(o, "kind") == kind);

    /// <summary>Follows a dotted path ("spec.template.spec") through nested mappings; null when any step is missing.</summary>
    public static object? At(object? node, string path)
    {
        foreach (var key in path.Split('.'))
        {
            if (node is not Dictionary<object, object> map || !map.TryGetValue(key, out node)) return null;
        }
        return node;
    }

    public static string? Str(object? node, string path) => At(node, path)?.ToString();

    public static Dictionary<object, object> Map(object? node, string path) =>
        At(node, path) as Dictionary<object, object> ?? throw new Xunit.Sdk.XunitException($"{path} is not a mapping");

    public static List<object> List(object? node, string path) =>
        At(node, path) as List<object> ?? throw new Xunit.Sdk.XunitException($"{path} is not a list");

    /// <summary>The entry of a list of named things (containers, ports, volumes, env) with that name.</summary>
    public static Dictionary<object, object> Named(object? node, string path, string name) =>
        List(node, path).OfType<Dictionary<object, object>>().FirstOrDefault(e => Str(e, "name") == name)
        ?? throw new Xunit.Sdk.XunitException($"{path} has no entry named {name}");

    public static List<string> Strings(object? node, string path) => List(node, path).Select(o => o.ToString()!).ToList();

    /// <summary>The value after a flag in an argument list ("--port", "7100"), or null.</summary>
    public static string? FlagValue(IReadOnlyList<string> args, string flag)
    {
        for (var i = 0; i < args.Count - 1; i++)
            if (args[i] == flag) return args[i + 1];
        return null;
    }
}
