using Potluck.Gateway.Telemetry;

namespace Potluck.Dashboard.Tests;

/// <summary>The dashboard's ring buffer reads this gateway's own instruments through an in-process MeterListener.</summary>
public sealed class RecentStatsTests
{
    private static KeyValuePair<string, object?> Outcome(string value) => new("outcome", value);

    [Fact]
    public void A_sample_folds_the_interval_of_this_gateways_metrics()
    {
        using var telemetry = new GatewayTelemetry();
        using var other = new GatewayTelemetry();
        using var stats = new RecentStats(telemetry);

        telemetry.CompletionTokens.Add(30);
        telemetry.TimeToFirstTokenMs.Record(100);
        telemetry.TimeToFirstTokenMs.Record(300);
        telemetry.Requests.Add(1, Outcome("200"));
        telemetry.Requests.Add(1, Outcome("503"));
        telemetry.Requests.Add(1, Outcome("400"));
        telemetry.Requests.Add(1, Outcome("error"));
        telemetry.Reroutes.Add(2);
        telemetry.EnteredQueue();
        telemetry.EnteredQueue();
        telemetry.SessionStarted();
        // Another gateway in the same process (same meter name) must not count here.
        other.CompletionTokens.Add(1000);
        other.Requests.Add(5, Outcome("500"));
        other.EnteredQueue();

        var first = stats.Sample(DateTime.UtcNow);
        Assert.Equal(30, first.CompletionTokens);
        Assert.True(first.Seconds > 0);
        Assert.Equal(30 / first.Seconds, first.TokensPerSecond, 30 / first.Seconds * 0.01 + 0.01);
        Assert.Equal(200, first.TimeToFirstTokenMs);
        Assert.Equal(300, first.MaxTimeToFirstTokenMs);
        Assert.Equal(2, first.Queued);
        Assert.Equal(1, first.Active);
        Assert.Equal(4, first.Requests);
        Assert.Equal(3, first.Errors);
        Assert.Equal(2, first.ServerErrors);
        Assert.Equal(2, first.Reroutes);

        telemetry.LeftQueue();
        var second = stats.Sample(DateTime.UtcNow);
        Assert.Equal(0, second.CompletionTokens);
        Assert.Equal(0, second.TokensPerSecond);
        Assert.Null(second.TimeToFirstTokenMs);
        Assert.Equal(1, second.Queued);
        Assert.Equal(0, second.Requests);

        Assert.Equal([first, second], stats.Latest(10));
        Assert.Equal([second], stats.Latest(1));
    }

    [Fact]
    public void The_ring_keeps_the_latest_samples_oldest_first()
    {
        var ring = new StatsRing(3);
        var start = new DateTime(2026, 1, 1, 0, 0, 0, DateTimeKind.Utc);
        var samples = Enumerable.Range(0, 5).Select(i => new StatsSample(start.AddSeconds(i), 1, i, i, null, null, 0, 0, 0, 0, 0, 0)).ToArray();
        Assert.Empty(ring.Latest(10));
        ring.Add(samples[0]);
        Assert.Equal([samples[0]], ring.Latest(10));
        foreach (var s in samples[1..]) ring.Add(s);
        Assert.Equal(samples[2..], ring.Latest(10));
        Assert.Equal(samples[3..], ring.Latest(2));
        Assert.Empty(ring.Latest(0));
    }
}
