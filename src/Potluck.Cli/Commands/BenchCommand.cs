using System.CommandLine;

namespace Potluck.Cli.Commands;

/// <summary>`potluck bench engine|hop|pool`: side-by-side benchmarks against llama.cpp with ratio tables and a JSON report.</summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var bench = new Command("bench", "Benchmarks against llama.cpp in the same process or on the same machine; prints ratios and writes a JSON report");
        bench.Subcommands.Add(Pending("engine", "Span engine vs llama.cpp (LLamaSharp) on one GGUF: prefill and decode speed",
            "the engine benchmark is not part of this build yet"));
        bench.Subcommands.Add(Pending("hop", "Cost of one gRPC hop between two nodes on loopback",
            "the hop benchmark is not part of this build yet"));
        bench.Subcommands.Add(Pending("pool", "A local pool end to end through the gateway vs a single llama.cpp process",
            "the pool benchmark is not part of this build yet"));
        return CliApplication.AddExamples(bench,
            "potluck bench engine --report bench-engine.json");
    }

    public static Option<FileInfo?> ReportOption() => new("--report") { Description = "Write the results as JSON to this file" };

    private static Command Pending(string name, string description, string missing)
    {
        var report = ReportOption();
        var command = new Command(name, description) { report };
        // Never pretend to have measured anything: say plainly that it is missing (exit 1).
        command.SetAction(int (_) => throw new CliFailureException(missing));
        return command;
    }
}
