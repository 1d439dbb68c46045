using System.Text;

namespace Potluck.Security;

/// <summary>Writes secrets so that only this user can read them, and never leaves a half-written file behind.</summary>
internal static class SecureFiles
{
    public static void WriteText(string path, string text, bool secret)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        CreatePrivateDirectory(directory);
        var temporary = Path.Combine(directory, $".{Path.GetFileName(path)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, Share = FileShare.None };
        if (!OperatingSystem.IsWindows())
            options.UnixCreateMode = secret ? UnixFileMode.UserRead | UnixFileMode.UserWrite
                : UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
        try
        {
            using (var stream = new FileStream(temporary, options))
            {
                stream.Write(Encoding.UTF8.GetBytes(text));
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }

    public static void CreatePrivateDirectory(string directory)
    {
        if (Directory.Exists(directory)) return;
        if (OperatingSystem.IsWindows()) Directory.CreateDirectory(directory);
        else Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }

    /// <summary>Reads a small file (a key, a token, a list); anything larger than <paramref name="maxBytes"/> is not one.</summary>
    public static string ReadText(string path, int maxBytes = 1 << 20)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new FileNotFoundException($"{path} does not exist", path);
        if (info.Length > maxBytes) throw new InvalidDataException($"{path} is {info.Length} bytes; at most {maxBytes} expected");
        return File.ReadAllText(path, Encoding.UTF8);
    }
}
