namespace Potluck.Cli;

internal static class Program
{
    private static int Main(string[] args)
    {
        Console.Error.WriteLine("potluck: commands are being built; see README.md");
        return 1;
    }
}
