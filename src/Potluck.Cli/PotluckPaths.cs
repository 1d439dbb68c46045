using Potluck.Hosting;

namespace Potluck.Cli;

/// <summary>Where potluck keeps its own files: $POTLUCK_HOME, else the user's local data folder.</summary>
public static class PotluckPaths
{
    public const string HomeVariable = PotluckHome.Variable;

    public static string Home => PotluckHome.Directory;

    /// <summary>Generated demo models are cached here, keyed by spec and type, so `serve` only generates once.</summary>
    public static string ModelCache => Path.Combine(Home, "models");
}
