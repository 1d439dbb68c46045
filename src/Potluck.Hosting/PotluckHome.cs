namespace Potluck.Hosting;

/// <summary>Where potluck keeps its own files: $POTLUCK_HOME, else the user's local data folder.</summary>
public static class PotluckHome
{
    public const string Variable = "POTLUCK_HOME";

    public static string Directory
    {
        get
        {
            var overridden = Environment.GetEnvironmentVariable(Variable);
            if (!string.IsNullOrWhiteSpace(overridden)) return Path.GetFullPath(overridden);
            var data = Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create);
            // A service account may have no HOME at all; fall back to the temp folder rather than the working directory.
            if (string.IsNullOrEmpty(data)) data = Path.GetTempPath();
            return Path.Combine(data, "potluck");
        }
    }
}
