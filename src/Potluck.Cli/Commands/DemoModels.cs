using Potluck.Hosting;

namespace Potluck.Cli.Commands;

/// <summary>
/// The trained demo model that `potluck serve` runs when no --model is given: models/potluck-demo.gguf in the
/// repository (made by `potluck model train-demo`), copied next to the binaries by the build.
/// </summary>
public static class DemoModels
{
    public const string TrainedFileName = "potluck-demo.gguf";

    /// <summary>Where the build puts the trained demo model.</summary>
    public static string TrainedPath => Path.Combine(AppContext.BaseDirectory, "models", TrainedFileName);

    /// <summary>The trained demo model's path; a build without it is one clear error.</summary>
    public static string Trained()
    {
        var path = TrainedPath;
        if (!File.Exists(path))
            throw new CannotLoadException(
                $"the trained demo model is missing from this build ({path}); rebuild from a checkout that has models/{TrainedFileName}, or pass --model");
        return path;
    }
}
