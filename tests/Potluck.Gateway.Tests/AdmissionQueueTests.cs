using System.Diagnostics.Metrics;
using Potluck.Gateway.Admission;
using Potluck.Gateway.Telemetry;

namespace Potluck.Gateway.Tests;

/// <summary>The admission queue alone: order, fairness between keys, the bound, the timeout, cancellation and slot accounting.</summary>
public sealed class AdmissionQueueTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    /// <summary>Waiters that write their name into one list when admitted, so the test sees the order slots were handed out.</summary>
    private sealed class Admissions(AdmissionQueue queue)
    {
        private readonly List<string> _order = [];

        public IReadOnlyList<string> Order
        {
            get { lock (_order) return [.. _order]; }
        }

        public Task Wait(string caller, string name, CancellationToken ct = default) => Run(caller, name, ct);

        private async Task Run(string caller, string name, CancellationToken ct)
        {
            await queue.EnterAsync(caller, ct);
            lock (_order) _order.Add(name);
        }

        /// <summary>Releases one slot and waits until its new holder is recorded.</summary>
        public async Task ReleaseAndSeeAsync(int expectedCount)
        {
            queue.Release(TimeSpan.FromMilliseconds(10));
            await WaitUntilAsync(() => Order.Count >= expectedCount, $"admission {expectedCount}");
        }
    }

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            await Task.Delay(5);
        }
    }

    [Fact]
    public async Task OneCallersWaitersAreAdmittedFirstInFirstOut()
    {
        var queue = new AdmissionQueue(1, 10, TimeSpan.FromMinutes(1));
        await queue.EnterAsync("a", default);
        var admissions = new Admissions(queue);
        var waits = new List<Task>();
        for (var i = 1; i <= 4; i++)
        {
            waits.Add(admissions.Wait("a", $"a{i}"));
            await WaitUntilAsync(() => queue.Waiting == waits.Count, "the waiter to queue");
        }
        for (var i = 1; i <= 4; i++) await admissions.ReleaseAndSeeAsync(i);
        Assert.Equal(["a1", "a2", "a3", "a4"], admissions.Order);
        await Task.WhenAll(waits).WaitAsync(Patience);
        Assert.Equal(1, queue.Running);
    }

    [Fact]
    public async Task CallersTakeTurnsSoAFloodingKeyDoesNotStarveOthers()
    {
        var queue = new AdmissionQueue(1, 100, TimeSpan.FromMinutes(1));
        await queue.EnterAsync("flood", default);
        var admissions = new Admissions(queue);
        var waits = new List<Task>();
        async Task Queue(string caller, string name)
        {
            waits.Add(admissions.Wait(caller, name));
            await WaitUntilAsync(() => queue.Waiting == waits.Count, "the waiter to queue");
        }
        for (var i = 1; i <= 4; i++) await Queue("flood", $"f{i}");
        await Queue("b", "b1");
        await Queue("b", "b2");
        await Queue("c", "c1");
        for (var i = 1; i <= 7; i++) await admissions.ReleaseAndSeeAsync(i);
        // One turn per caller per round, each caller's own requests in arrival order.
        Assert.Equal(["f1", "b1", "c1", "f2", "b2", "f3", "f4"], admissions.Order);
        await Task.WhenAll(waits).WaitAsync(Patience);
    }

    [Fact]
    public async Task AReleasedSlotGoesToTheWaiterNotToANewArrival()
    {
        var queue = new AdmissionQueue(1, 10, TimeSpan.FromMinutes(1));
        await queue.EnterAsync("a", default);
        var waiting = queue.EnterAsync("a", default).AsTask();
        await WaitUntilAsync(() => queue.Waiting == 1, "the waiter to queue");
        queue.Release(TimeSpan.Zero);
        // The slot was handed over: a newcomer must wait although nobody "holds" it from its point of view yet.
        var newcomer = queue.EnterAsync("b", default);
        Assert.False(newcomer.IsCompleted);
        await waiting.WaitAsync(Patience);
        queue.Release(TimeSpan.Zero);
        await newcomer.AsTask().WaitAsync(Patience);
        queue.Release(TimeSpan.Zero);
        Assert.Equal(0, queue.Running);
    }

    [Fact]
    public async Task AFullQueueRejectsAtOnceSayingThePoolIsAtCapacity()
    {
        var queue = new AdmissionQueue(1, 2, TimeSpan.FromMinutes(1));
        await queue.EnterAsync("a", default);
        var first = queue.EnterAsync("a", default).AsTask();
        var second = queue.EnterAsync("b", default).AsTask();
        var third = queue.EnterAsync("c", default);
        Assert.True(third.IsFaulted);
        var e = await Assert.ThrowsAsync<PoolAtCapacityException>(() => third.AsTask());
        Assert.Equal(AdmissionRejection.QueueFull, e.Reason);
        Assert.Equal("queue_full", e.ReasonTag);
        Assert.StartsWith("The pool is at capacity: 1 generation is running and 2 requests are waiting; retry after ", e.Message);
        Assert.DoesNotContain("fail", e.Message, StringComparison.OrdinalIgnoreCase);
        Assert.InRange(e.RetryAfter, AdmissionQueue.MinRetryAfter, AdmissionQueue.MaxRetryAfter);
        Assert.Equal(2, queue.Waiting);
        queue.Release(TimeSpan.Zero);
        queue.Release(TimeSpan.Zero);
        await Task.WhenAll(first, second).WaitAsync(Patience);
    }

    [Fact]
    public async Task NoQueueRejectsWheneverEverySlotIsBusy()
    {
        var queue = new AdmissionQueue(2, 0, TimeSpan.FromMinutes(1));
        await queue.EnterAsync("a", default);
        await queue.EnterAsync("a", default);
        await Assert.ThrowsAsync<PoolAtCapacityException>(() => queue.EnterAsync("b", default).AsTask());
        queue.Release(TimeSpan.Zero);
        await queue.EnterAsync("b", default);
    }

    [Fact]
    public async Task AWaiterPastTheTimeoutIsRejectedAndLeavesTheQueue()
    {
        var queue = new AdmissionQueue(1, 10, TimeSpan.FromMilliseconds(200));
        await queue.EnterAsync("a", default);
        var waiting = queue.EnterAsync("b", default).AsTask();
        var e = await Assert.ThrowsAsync<PoolAtCapacityException>(() => waiting.WaitAsync(Patience));
        Assert.Equal(AdmissionRejection.Timeout, e.Reason);
        Assert.StartsWith("The pool is at capacity: no generation slot came free within 0.2 s", e.Message);
        Assert.Equal(0, queue.Waiting);
        // The timed-out waiter took nothing: the one slot is still the first holder's, and free after it.
        queue.Release(TimeSpan.Zero);
        Assert.Equal(0, queue.Running);
        await queue.EnterAsync("b", default);
    }

    [Fact]
    public async Task ACancelledWaiterLeavesAtOnceAndItsPlaceIsNotConsumed()
    {
        var queue = new AdmissionQueue(1, 10, TimeSpan.FromMinutes(1));
        await queue.EnterAsync("a", default);
        using var gone = new CancellationTokenSource();
        var admissions = new Admissions(queue);
        var cancelled = admissions.Wait("a", "gone", gone.Token);
        await WaitUntilAsync(() => queue.Waiting == 1, "the first waiter to queue");
        var next = admissions.Wait("b", "next");
        await WaitUntilAsync(() => queue.Waiting == 2, "the second waiter to queue");
        await gone.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled.WaitAsync(Patience));
        Assert.Equal(1, queue.Waiting);
        await admissions.ReleaseAndSeeAsync(1);
        Assert.Equal(["next"], admissions.Order);
        await next.WaitAsync(Patience);
        queue.Release(TimeSpan.Zero);
        Assert.Equal(0, queue.Running);
        Assert.Equal(0, queue.Waiting);
    }

    [Fact]
    public async Task AnAlreadyCancelledTokenNeverQueues()
    {
        var queue = new AdmissionQueue(1, 10, TimeSpan.FromMinutes(1));
        await queue.EnterAsync("a", default);
        using var gone = new CancellationTokenSource();
        await gone.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => queue.EnterAsync("a", gone.Token).AsTask());
        Assert.Equal(0, queue.Waiting);
    }

    [Fact]
    public void ReleasingMoreThanWasEnteredThrows()
    {
        var queue = new AdmissionQueue(1, 1, TimeSpan.FromMinutes(1));
        Assert.Throws<InvalidOperationException>(() => queue.Release(TimeSpan.Zero));
    }

    [Fact]
    public async Task RetryAfterFollowsTheMeanHoldTimeAndIsClamped()
    {
        var queue = new AdmissionQueue(2, 10, TimeSpan.FromMinutes(1));
        for (var i = 0; i < 30; i++)
        {
            await queue.EnterAsync("a", default);
            queue.Release(TimeSpan.FromSeconds(10));
        }
        // About 10 s per generation, 2 slots, nobody waiting: a slot in about 5 s.
        Assert.Equal(TimeSpan.FromSeconds(5), queue.RetryAfter);
        for (var i = 0; i < 30; i++)
        {
            await queue.EnterAsync("a", default);
            queue.Release(TimeSpan.FromMinutes(10));
        }
        Assert.Equal(AdmissionQueue.MaxRetryAfter, queue.RetryAfter);
        for (var i = 0; i < 60; i++)
        {
            await queue.EnterAsync("a", default);
            queue.Release(TimeSpan.Zero);
        }
        Assert.Equal(AdmissionQueue.MinRetryAfter, queue.RetryAfter);
        // A slot given back unused does not count as a generation.
        for (var i = 0; i < 30; i++)
        {
            await queue.EnterAsync("a", default);
            queue.Release(TimeSpan.FromSeconds(10));
        }
        await queue.EnterAsync("a", default);
        queue.Release(AdmissionQueue.Unused);
        Assert.Equal(TimeSpan.FromSeconds(5), queue.RetryAfter);
    }

    [Fact]
    public async Task NoSlotIsLostOrDoubledUnderConcurrentEntersCancelsAndTimeouts()
    {
        const int slots = 3;
        var queue = new AdmissionQueue(slots, 1000, TimeSpan.FromMilliseconds(300));
        var holders = 0;
        var maxHolders = 0;
        var admitted = 0;
        var refused = 0;
        async Task Worker(int id)
        {
            var random = new Random(id);
            for (var i = 0; i < 150; i++)
            {
                using var cancel = new CancellationTokenSource();
                if (random.Next(4) == 0) cancel.CancelAfter(random.Next(0, 3));
                try
                {
                    await queue.EnterAsync("caller-" + random.Next(3), cancel.Token);
                }
                catch (OperationCanceledException)
                {
                    Interlocked.Increment(ref refused);
                    continue;
                }
                catch (PoolAtCapacityException)
                {
                    Interlocked.Increment(ref refused);
                    continue;
                }
                var now = Interlocked.Increment(ref holders);
                InterlockedMax(ref maxHolders, now);
                Interlocked.Increment(ref admitted);
                if (random.Next(3) == 0) await Task.Yield();
                Interlocked.Decrement(ref holders);
                queue.Release(TimeSpan.FromMilliseconds(1));
            }
        }
        await Task.WhenAll(Enumerable.Range(0, 12).Select(id => Task.Run(() => Worker(id)))).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(maxHolders <= slots, $"{maxHolders} held a slot at once, more than {slots}");
        Assert.Equal(12 * 150, admitted + refused);
        Assert.True(admitted > 12 * 150 / 2, $"only {admitted} admitted");
        Assert.Equal(0, queue.Running);
        Assert.Equal(0, queue.Waiting);
        // Every slot is free again: as many enter at once as there are slots, and no more.
        for (var i = 0; i < slots; i++) Assert.True(queue.EnterAsync("x", default).IsCompletedSuccessfully);
        Assert.False(queue.EnterAsync("x", default).IsCompleted);
    }

    private static void InterlockedMax(ref int target, int value)
    {
        var seen = Volatile.Read(ref target);
        while (value > seen)
        {
            var previous = Interlocked.CompareExchange(ref target, value, seen);
            if (previous == seen) return;
            seen = previous;
        }
    }

    [Fact]
    public async Task TelemetryCountsAdmissionsWaitsRejectionsAndTheQueue()
    {
        using var telemetry = new GatewayTelemetry();
        var rejections = new List<string>();
        var waits = new List<double>();
        long admitted = 0;
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (ReferenceEquals(instrument.Meter, telemetry.Meter)) l.EnableMeasurementEvents(instrument);
            },
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            if (instrument.Name == "potluck.gateway.admitted") Interlocked.Add(ref admitted, value);
            if (instrument.Name != "potluck.gateway.admission_rejections") return;
            foreach (var tag in tags)
                if (tag.Key == "reason") lock (rejections) rejections.Add((string)tag.Value!);
        });
        listener.SetMeasurementEventCallback<double>((instrument, value, _, _) =>
        {
            if (instrument.Name == "potluck.gateway.queue_wait") lock (waits) waits.Add(value);
        });
        listener.Start();

        var queue = new AdmissionQueue(1, 1, TimeSpan.FromMilliseconds(300), telemetry);
        await queue.EnterAsync("a", default);
        var waiting = queue.EnterAsync("a", default).AsTask();
        Assert.Equal(1, telemetry.QueuedRequests);
        await Assert.ThrowsAsync<PoolAtCapacityException>(() => queue.EnterAsync("b", default).AsTask());
        await Task.Delay(50);
        queue.Release(TimeSpan.Zero);
        await waiting.WaitAsync(Patience);
        Assert.Equal(0, telemetry.QueuedRequests);
        await Assert.ThrowsAsync<PoolAtCapacityException>(() => queue.EnterAsync("c", default).AsTask().WaitAsync(Patience));
        Assert.Equal(0, telemetry.QueuedRequests);

        Assert.Equal(2, Interlocked.Read(ref admitted));
        lock (rejections) Assert.Equal(["queue_full", "timeout"], rejections);
        lock (waits)
        {
            Assert.Equal(2, waits.Count);
            Assert.Equal(0, waits[0]);
            Assert.True(waits[1] >= 0.04, $"the waiter's wait was {waits[1]} s");
        }
    }
}
