using System.Net;
using Microsoft.Extensions.Logging;
using Potluck.Hosting;
using Xunit.Abstractions;

namespace Potluck.Cli.Tests;

/// <summary>
/// Quiet by default, through the real executable: a gateway's start is a handful of lines, requests are not logged
/// unless asked, a dead peer is one warning without stack traces, and Ctrl+C exits 130.
/// </summary>
[ProcessTest]
public sealed class QuietLogTests(DemoModel model, ITestOutputHelper output) : IClassFixture<DemoModel>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(90);

    private ChildProcess Gateway(string cluster, out int port, out int siloPort, params string[] extra)
    {
        port = Ports.Free();
        siloPort = Ports.Free();
        return PotluckProcess.Start(model.Home.Path,
            ["gateway", "--model", model.Path, "--port", port.ToString(), "--silo-port", siloPort.ToString(),
             "--pool-port", Ports.Free().ToString(), "--cluster-id", cluster, .. extra], output);
    }

    [Fact]
    public async Task A_default_gateway_start_prints_at_most_15_lines_and_no_request_lines()
    {
        await using var gateway = Gateway($"quiet-{Guid.NewGuid():N}", out var port, out _);
        await gateway.WaitForOutputAsync("Gateway serving", Limit);
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) })
        {
            for (var i = 0; i < 5; i++)
            {
                using var response = await http.GetAsync($"http://127.0.0.1:{port}/v1/models");
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            }
        }
        // Late starters (the watchdog's first check, membership) have had their chance.
        await Task.Delay(TimeSpan.FromSeconds(5));
        var lines = gateway.Lines;
        Assert.True(lines.Count <= 15, $"{lines.Count} lines:\n{string.Join('\n', lines)}");
        Assert.DoesNotContain(lines, l => l.Contains("/v1/models", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.Contains("Participant check thread", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.TrimStart().StartsWith("at ", StringComparison.Ordinal));

        gateway.Signal(ProcessSignal.Interrupt);
        var code = await gateway.WaitForExitAsync(Limit);
        Assert.True(code == 130, $"Ctrl+C exited {code}\n{gateway.Output}");
    }

    [Fact]
    public async Task The_access_log_is_one_line_per_request_when_asked_for()
    {
        await using var gateway = Gateway($"quiet-{Guid.NewGuid():N}", out var port, out _, "--access-log");
        await gateway.WaitForOutputAsync("Gateway serving", Limit);
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) })
        {
            using var response = await http.GetAsync($"http://127.0.0.1:{port}/v1/models?secret=x");
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }
        var line = await gateway.WaitForOutputAsync("GET /v1/models", Limit);
        Assert.Contains(" 200 ", line);
        Assert.DoesNotContain("secret", gateway.Output);
        Assert.Single(gateway.Lines, l => l.Contains("GET /v1/models", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_dead_peer_is_one_warning_without_stack_traces()
    {
        var cluster = $"quiet-{Guid.NewGuid():N}";
        await using var gateway = Gateway(cluster, out _, out var siloPort);
        await gateway.WaitForOutputAsync("Gateway serving", Limit);
        ChildProcess Node(string id) => PotluckProcess.Start(model.Home.Path,
            ["node", "--model", model.Path, "--layers", "0-8", "--join", $"127.0.0.1:{siloPort}", "--cluster-id", cluster,
             "--port", Ports.Free().ToString(), "--silo-port", Ports.Free().ToString(), "--node-id", id, "--threads", "1"], output);
        await using var doomed = Node("quiet-doomed");
        await using var survivor = Node("quiet-survivor");
        await doomed.WaitForOutputAsync("serving layers", Limit);
        await survivor.WaitForOutputAsync("serving layers", Limit);
        await Task.Delay(TimeSpan.FromSeconds(3));
        var gatewayBefore = gateway.Lines.Count;
        var survivorBefore = survivor.Lines.Count;

        doomed.Kill();
        // Production failure detection: probes, suspicion and the death vote take a few tens of seconds.
        await gateway.WaitForOutputAsync("quiet-doomed (node)", TimeSpan.FromSeconds(120));
        await Task.Delay(TimeSpan.FromSeconds(5));

        foreach (var (name, process, before) in new[] { ("gateway", gateway, gatewayBefore), ("surviving node", survivor, survivorBefore) })
        {
            var after = process.Lines.Skip(before).ToList();
            var text = $"{name} after the kill:\n{string.Join('\n', after)}";
            var warnings = after.Count(l => l.Contains("warn:", StringComparison.Ordinal) || l.Contains("fail:", StringComparison.Ordinal));
            Assert.True(warnings <= 3, text);
            Assert.DoesNotContain(after, l => l.TrimStart().StartsWith("at ", StringComparison.Ordinal));
            Assert.DoesNotContain(after, l => l.Contains("Exception", StringComparison.Ordinal));
        }
        Assert.Contains(gateway.Lines.Skip(gatewayBefore), l => l.Contains("warn:", StringComparison.Ordinal) && l.Contains("quiet-doomed (node)", StringComparison.Ordinal) && l.Contains("is dead", StringComparison.Ordinal));
    }
}

/// <summary>The Orleans watchdog filter: it drops exactly the bogus first participant-stall report.</summary>
public sealed class WatchdogStartupReportTests
{
    private sealed class Capture : ILoggerProvider, ILogger
    {
        public List<string> Messages { get; } = [];
        public ILogger CreateLogger(string categoryName) => this;
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Messages.Add(formatter(state, exception));
        public void Dispose() { }
    }

    private static readonly Action<ILogger, TimeSpan, Exception?> ParticipantStall = LoggerMessage.Define<TimeSpan>(LogLevel.Warning,
        new EventId(WatchdogStartupReport.StallEventId), "Participant check thread has not completed for {TimeSinceLastTick}, potentially indicating lock contention or deadlock, CPU starvation, or another execution anomaly.");

    private static readonly Action<ILogger, TimeSpan, Exception?> PlatformStall = LoggerMessage.Define<TimeSpan>(LogLevel.Warning,
        new EventId(WatchdogStartupReport.StallEventId), ".NET Runtime Platform stalled for {TimeSinceLastTick}.");

    private static (ILogger Logger, Capture Capture) Filter(TimeSpan processAge)
    {
        var capture = new Capture();
        var factory = LoggerFactory.Create(builder => builder.AddProvider(capture));
        var type = typeof(WatchdogStartupReport.FilteringLogger<>).MakeGenericType(WatchdogStartupReport.WatchdogType!);
        return ((ILogger)Activator.CreateInstance(type, factory, (Func<TimeSpan>)(() => processAge))!, capture);
    }

    [Fact]
    public void The_watchdog_type_is_where_the_filter_expects_it() => Assert.NotNull(WatchdogStartupReport.WatchdogType);

    [Fact]
    public void Only_the_first_report_longer_than_the_process_is_dropped()
    {
        var (logger, capture) = Filter(TimeSpan.FromSeconds(10));
        ParticipantStall(logger, TimeSpan.FromMinutes(17), null); // since boot: dropped
        ParticipantStall(logger, TimeSpan.FromMinutes(17), null); // a second one is real
        PlatformStall(logger, TimeSpan.FromMinutes(17), null);    // same event id, other report
        Assert.Equal(2, capture.Messages.Count);
        Assert.StartsWith("Participant check thread", capture.Messages[0]);
        Assert.StartsWith(".NET Runtime Platform", capture.Messages[1]);
    }

    [Fact]
    public void A_first_report_shorter_than_the_process_is_a_real_stall_and_kept()
    {
        var (logger, capture) = Filter(TimeSpan.FromMinutes(30));
        ParticipantStall(logger, TimeSpan.FromSeconds(40), null);
        Assert.Single(capture.Messages);
    }
}
