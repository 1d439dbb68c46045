using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using System.Reflection;
using Potluck.Cli.Commands;

namespace Potluck.Cli;

/// <summary>
/// Builds the `potluck` command tree and maps every outcome to one exit code of <see cref="ExitCodes"/> and at most
/// one error line: a <see cref="HostExitException"/> (from a command, the join workflow or a host) carries its code.
/// </summary>
public static class CliApplication
{
    /// <summary>Prints full exception details; without it errors are one line.</summary>
    public static readonly Option<bool> Verbose = new("--verbose", "-v")
    {
        Description = "Show debug logs and full exception details",
        Recursive = true,
    };

    private static readonly Dictionary<Command, string[]> ExamplesByCommand = [];

    /// <summary>
    /// How to run potluck again, for printed hints ("./potluck chat ..."): what the repository's launcher was typed
    /// as (it sets POTLUCK_LAUNCHER), else that launcher when this is a checkout's build output, else "potluck".
    /// </summary>
    public static string InvokedAs
    {
        get
        {
            if (Environment.GetEnvironmentVariable("POTLUCK_LAUNCHER") is { Length: > 0 } launcher) return launcher;
            // A checkout's output folder is <root>/src/Potluck.Cli/bin/<configuration>/<framework>/.
            var root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", ".."));
            var script = Path.Combine(root, "potluck");
            if (!File.Exists(script) || !File.Exists(Path.Combine(root, "Cluster.sln"))) return "potluck";
            var relative = Path.GetRelativePath(Environment.CurrentDirectory, script);
            return relative.StartsWith('.') || Path.IsPathRooted(relative) ? relative : $"./{relative}";
        }
    }

    public static async Task<int> RunAsync(string[] args)
    {
        var root = BuildRootCommand();
        ParseResult parse;
        try
        {
            parse = root.Parse(args);
        }
        catch (Exception error)
        {
            return ReportFailure(error, args.Contains("--verbose") || args.Contains("-v"));
        }
        if (parse.Action is ParseErrorAction)
        {
            // System.CommandLine would exit 1 and dump the help text; scripts need 2 and one clear line.
            Console.Error.WriteLine($"potluck: error: {FirstParseError(parse)}");
            Console.Error.WriteLine($"Run '{CommandPath(parse.CommandResult.Command)} --help' for usage.");
            return ExitCodes.Usage;
        }

        var invocation = new InvocationConfiguration
        {
            EnableDefaultExceptionHandler = false,
            // Commands install their own signal handling: serve must stop children, chat must stop a reply.
            ProcessTerminationTimeout = null,
        };
        int code;
        try
        {
            code = await parse.InvokeAsync(invocation);
        }
        catch (Exception error)
        {
            return ReportFailure(error, parse.GetValue(Verbose));
        }
        // Ctrl+C stopped it, even if cleanly: 130, what docs/cli.md promises and shells expect.
        return code == ExitCodes.Ok && ShutdownSignals.InterruptReceived ? ExitCodes.Interrupted : code;
    }

    /// <summary>The most specific parse error: an unknown word says more than the "required command" that follows from it.</summary>
    private static string FirstParseError(ParseResult parse)
    {
        if (parse.UnmatchedTokens.Count > 0)
            return parse.CommandResult.Command.Subcommands.Count > 0
                ? $"unknown command or argument '{parse.UnmatchedTokens[0]}'"
                : $"unexpected argument '{parse.UnmatchedTokens[0]}'";
        return FriendlyValueError(parse.Errors[0]) ?? OneLine(parse.Errors[0].Message);
    }

    // System.CommandLine says "Cannot parse argument 'abc' for option '--nodes' as expected type 'System.Int32'.".
    private static readonly System.Text.RegularExpressions.Regex CannotParse = new(
        @"^Cannot parse argument '(?<value>.*)' for (?:option|command) '(?<name>[^']*)' as expected type '(?<type>[^']*)'");

    /// <summary>An unparsable option value in words: "--nodes must be a whole number (got 'abc')".</summary>
    internal static string? FriendlyValueError(ParseError error)
    {
        var match = CannotParse.Match(error.Message);
        if (!match.Success) return null;
        var type = error.SymbolResult switch
        {
            OptionResult option => option.Option.ValueType,
            ArgumentResult { Parent: OptionResult option } => option.Option.ValueType,
            ArgumentResult argument => argument.Argument.ValueType,
            _ => null,
        };
        var name = error.SymbolResult is ArgumentResult { Parent: not OptionResult } argumentOnly
            ? $"<{argumentOnly.Argument.Name}>"
            : match.Groups["name"].Value;
        return $"{name} must be {Expected(type, match.Groups["type"].Value)} (got '{match.Groups["value"].Value}')";
    }

    private static string Expected(Type? type, string typeName)
    {
        type = type is null ? null : Nullable.GetUnderlyingType(type) ?? type;
        if (type is { IsEnum: true }) return $"one of {string.Join(", ", Enum.GetNames(type))}";
        return (type?.FullName ?? typeName) switch
        {
            "System.Int32" or "System.Int64" or "System.Int16" or "System.Byte" => "a whole number",
            "System.UInt32" or "System.UInt64" or "System.UInt16" => "a whole number, 0 or more",
            "System.Double" or "System.Single" or "System.Decimal" => "a number",
            "System.Boolean" => "true or false",
            "System.TimeSpan" => "a duration such as 30 or 00:00:30",
            _ => $"a valid {type?.Name ?? typeName}",
        };
    }

    /// <summary>Writes the one-line error (or the whole exception with --verbose) and picks the exit code.</summary>
    public static int ReportFailure(Exception error, bool verbose)
    {
        var root = Unwrap(error);
        if (root is OperationCanceledException)
        {
            Console.Error.WriteLine("potluck: interrupted");
            return ExitCodes.Interrupted;
        }
        Console.Error.WriteLine($"potluck: error: {OneLine(root.Message)}");
        if (verbose) Console.Error.WriteLine(error.ToString());
        return root is HostExitException exit ? exit.ExitCode : ExitCodes.Failure;
    }

    public static RootCommand BuildRootCommand()
    {
        ExamplesByCommand.Clear();
        var root = new RootCommand(
            "Potluck: a pool of ordinary machines serving one large language model through an OpenAI-compatible API.");
        root.Options.Add(Verbose);
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(NodeCommand.Create());
        root.Subcommands.Add(GatewayCommand.Create());
        root.Subcommands.Add(PoolCommand.Create());
        root.Subcommands.Add(ModelCommands.Create());
        root.Subcommands.Add(ChatCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        AddExamples(root,
            "potluck serve",
            "potluck model inspect ./Qwen2.5-0.5B-Instruct-Q8_0.gguf",
            "potluck chat --url http://127.0.0.1:8080");
        InstallExamplesSection(root);
        return root;
    }

    /// <summary>Registers the lines shown under "Examples:" in that command's --help.</summary>
    public static T AddExamples<T>(T command, params string[] examples) where T : Command
    {
        ExamplesByCommand[command] = examples;
        return command;
    }

    public static string CommandPath(Command command)
    {
        var names = new List<string>();
        for (Symbol? symbol = command; symbol is Command current; symbol = current.Parents.FirstOrDefault())
            names.Add(current is RootCommand ? "potluck" : current.Name);
        names.Reverse();
        return string.Join(' ', names);
    }

    private static void InstallExamplesSection(RootCommand root)
    {
        var help = root.Options.OfType<HelpOption>().Single();
        if (help.Action is HelpAction standard) help.Action = new HelpWithExamplesAction(standard, ExamplesByCommand);
    }

    /// <summary>The standard help text followed by an "Examples:" section for commands that registered some.</summary>
    private sealed class HelpWithExamplesAction(HelpAction standard, IReadOnlyDictionary<Command, string[]> examples) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            standard.Invoke(parseResult);
            if (examples.TryGetValue(parseResult.CommandResult.Command, out var lines) && lines.Length > 0)
            {
                var output = parseResult.InvocationConfiguration.Output;
                output.WriteLine("Examples:");
                foreach (var line in lines) output.WriteLine($"  {line}");
                output.WriteLine();
            }
            return ExitCodes.Ok;
        }
    }

    private static Exception Unwrap(Exception error)
    {
        while (true)
        {
            switch (error)
            {
                case AggregateException { InnerExceptions: [var only] }:
                    error = only;
                    continue;
                case TargetInvocationException { InnerException: { } inner }:
                    error = inner;
                    continue;
                case TypeInitializationException { InnerException: { } inner }:
                    error = inner;
                    continue;
                default:
                    return error;
            }
        }
    }

    private static string OneLine(string message) =>
        string.Join(' ', message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
