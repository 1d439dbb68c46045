namespace Potluck.Cli;

/// <summary>Where potluck keeps its own files: $POTLUCK_HOME, else the user's local data folder.</summary>
public static class PotluckPaths
{
    public const string HomeVariable = "POTLUCK_HOME";

    public static string Home
    {
        get
        {
            var overridden = Environment.GetEnvironmentVariable(HomeVariable);
            if (!string.IsNullOrWhiteSpace(overridden)) return Path.GetFullPath(overridden);
            var data = Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create);
            // A service account may have no HOME at all; fall back to the temp folder rather than the working directory.
            if (string.IsNullOrEmpty(data)) data = Path.GetTempPath();
            return Path.Combine(data, "potluck");
        }
    }

    /// <summary>Generated demo models are cached here, keyed by spec and type, so `serve` only generates once.</summary>
    public static string ModelCache => Path.Combine(Home, "models");
}
