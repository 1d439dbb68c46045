using BenchmarkDotNet.Running;

// Every benchmark class carries [MemoryDiagnoser]; pass --job short for a run of a few minutes (see benchmarks/README.md).
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
