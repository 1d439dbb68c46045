using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Running;

// Every benchmark class carries [MemoryDiagnoser]; pass --job short for a run of a few minutes (see benchmarks/README.md).
// Reports go under the build output (bin/, ignored by git), not into the directory the run started in.
// BenchmarkDotNet rebuilds the node and gateway graph for its generated project: past its 2-minute default on a busy machine.
var config = DefaultConfig.Instance
    .WithArtifactsPath(Path.Combine(AppContext.BaseDirectory, "BenchmarkDotNet.Artifacts"))
    .WithBuildTimeout(TimeSpan.FromMinutes(10));
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
