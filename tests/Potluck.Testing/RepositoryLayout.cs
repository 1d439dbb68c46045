using System.Reflection;

namespace Potluck.Testing;

/// <summary>Where the repository and the build outputs the tests start are: found from the running test assembly.</summary>
public static class RepositoryLayout
{
    /// <summary>The folder holding Cluster.sln.</summary>
    public static string Root { get; } = FindRoot();

    /// <summary>The configuration these tests were built with (Release in CI; process tests start its outputs).</summary>
    public static string Configuration { get; } =
        typeof(RepositoryLayout).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Debug";

    /// <summary>A project's built assembly, e.g. ("src/Potluck.Cli", "potluck.dll"); fails with what to build.</summary>
    public static string BuildOutput(string projectDirectory, string assemblyFile)
    {
        var path = Path.Combine(Root, projectDirectory, "bin", Configuration, "net10.0", assemblyFile);
        if (!File.Exists(path))
            throw new FileNotFoundException($"{assemblyFile} ({Configuration}) not found; build {projectDirectory} -c {Configuration} first", path);
        return path;
    }

    private static string FindRoot()
    {
        for (var folder = new DirectoryInfo(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
            if (File.Exists(Path.Combine(folder.FullName, "Cluster.sln"))) return folder.FullName;
        throw new InvalidOperationException($"Cluster.sln not found above {AppContext.BaseDirectory}");
    }
}
