using System.Security.Claims;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Potluck.Gateway.Access;
using Potluck.Gateway.Admission;
using Potluck.Gateway.Telemetry;
using Potluck.Hosting;

namespace Potluck.Gateway.Tests;

/// <summary>The admission settings from configuration, and what the dashboard's samples make of admissions.</summary>
public sealed class AdmissionSettingsTests
{
    private static GatewayOptions Read(params (string Key, string Value)[] values) => GatewayOptions.FromConfiguration(new ConfigurationBuilder()
        .AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>($"Potluck:Gateway:{v.Key}", v.Value)).Append(new("Potluck:Gateway:ModelPath", "m.gguf")))
        .Build());

    [Fact]
    public void QueueSettingsHaveDefaultsAndAreReadFromConfiguration()
    {
        var defaults = Read();
        Assert.Equal(256, defaults.MaxQueuedRequests);
        Assert.Equal(TimeSpan.FromSeconds(120), defaults.QueueTimeout);
        Assert.Equal(TimeSpan.FromSeconds(5), defaults.QueueKeepAliveInterval);
        var set = Read(("MaxQueuedRequests", "0"), ("QueueTimeout", "2.5"), ("QueueKeepAliveInterval", "00:00:01"));
        Assert.Equal(0, set.MaxQueuedRequests);
        Assert.Equal(TimeSpan.FromSeconds(2.5), set.QueueTimeout);
        Assert.Equal(TimeSpan.FromSeconds(1), set.QueueKeepAliveInterval);
    }

    [Theory]
    [InlineData("MaxQueuedRequests", "-1")]
    [InlineData("MaxQueuedRequests", "many")]
    [InlineData("QueueTimeout", "0")]
    [InlineData("QueueKeepAliveInterval", "-5")]
    public void ABadQueueSettingNamesItsKey(string key, string value)
    {
        var e = Assert.Throws<ConfigurationUsageException>(() => Read((key, value)));
        Assert.Contains(key, e.Message);
    }

    [Fact]
    public void TheValidatorRefusesANegativeQueueOrNonPositiveDurations()
    {
        var options = new GatewayOptions { ModelPath = "m.gguf", MaxQueuedRequests = -1, QueueTimeout = TimeSpan.Zero, QueueKeepAliveInterval = TimeSpan.Zero };
        var result = new GatewayOptionsValidator().Validate(null, options);
        Assert.True(result.Failed);
        Assert.Contains("MaxQueuedRequests", result.FailureMessage);
        Assert.Contains("QueueTimeout", result.FailureMessage);
        Assert.Contains("QueueKeepAliveInterval", result.FailureMessage);
    }

    [Fact]
    public void ARequestWaitsInItsKeysLineAndWithoutAKeyInTheSharedOne()
    {
        var keyed = new DefaultHttpContext
        {
            User = new ClaimsPrincipal(new ClaimsIdentity([new Claim(ApiKeyAuthenticationHandler.KeyNameClaim, "team-a")], ApiKeyAuthenticationHandler.SchemeName)),
        };
        Assert.Equal("key:team-a", AdmissionCaller.Of(keyed));
        Assert.Equal(AdmissionCaller.Open, AdmissionCaller.Of(new DefaultHttpContext()));
    }

    [Fact]
    public async Task ADashboardSampleHasTheWaitPercentilesAndTheRejections()
    {
        using var telemetry = new GatewayTelemetry();
        using var stats = new RecentStats(telemetry);
        var queue = new AdmissionQueue(1, 1, TimeSpan.FromMinutes(1), telemetry);
        var empty = stats.Sample(DateTime.UtcNow);
        Assert.Null(empty.WaitP50Seconds);
        Assert.Null(empty.WaitP95Seconds);
        Assert.Equal(0, empty.Rejections);

        await queue.EnterAsync("a", default);
        var waiting = queue.EnterAsync("b", default).AsTask();
        await Assert.ThrowsAsync<PoolAtCapacityException>(() => queue.EnterAsync("c", default).AsTask());
        await Task.Delay(100);
        queue.Release(TimeSpan.Zero);
        await waiting.WaitAsync(TimeSpan.FromSeconds(10));
        var sample = stats.Sample(DateTime.UtcNow);
        // Two admissions: one at once (0 s), one after about 0.1 s.
        Assert.Equal(0, sample.WaitP50Seconds);
        Assert.True(sample.WaitP95Seconds >= 0.09, $"p95 {sample.WaitP95Seconds}");
        Assert.Equal(1, sample.Rejections);
        Assert.Equal(0, sample.Queued);
        queue.Release(TimeSpan.Zero);
    }
}
