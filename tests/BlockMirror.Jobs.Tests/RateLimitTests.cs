using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;
using BlockMirror.Jobs.Tests.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests;

/// <summary>
/// Speed limits on fake time only: the rate limiter alone, and a mirror whose clock moves only when the
/// test advances it. Nothing here measures wall-clock time.
/// </summary>
public sealed class RateLimitTests
{
    static readonly TimeSpan Slice = RateLimiter.DefaultSlice;

    // ----- RateLimiter -----

    [Fact]
    public void Speed_0_never_delays()
    {
        var time = new ManualTimeProvider();
        var limiter = new RateLimiter(time);
        Assert.Equal(0, limiter.Speed);
        for (var i = 0; i < 1000; i++)
        {
            Assert.Equal(TimeSpan.Zero, limiter.CalculateDelay(1 << 30));
        }
    }

    [Fact]
    public void Work_within_a_slices_quota_passes_and_the_work_that_uses_it_up_waits_for_the_slice_end()
    {
        var time = new ManualTimeProvider();
        var limiter = new RateLimiter(time);
        limiter.SetSpeed(1_000_000);

        // Away from timestamp 0: a limiter's first slice ends at 0 (as QEMU's), which only a fake clock reaches.
        time.Advance(TimeSpan.FromSeconds(1));

        // Quota: 100 000 bytes per 100 ms slice.
        Assert.Equal(TimeSpan.Zero, limiter.CalculateDelay(40_000));
        time.Advance(TimeSpan.FromMilliseconds(30));
        Assert.Equal(TimeSpan.Zero, limiter.CalculateDelay(59_999));
        Assert.Equal(TimeSpan.FromMilliseconds(70), limiter.CalculateDelay(1));
        time.Advance(TimeSpan.FromMilliseconds(70));

        // Exactly at the slice end the work continues in the same (extended) accounting: 3 slices' worth
        // in total ends 300 ms after the start.
        Assert.Equal(TimeSpan.FromMilliseconds(200), limiter.CalculateDelay(200_000));
    }

    [Fact]
    public void A_slice_that_is_over_is_forgotten()
    {
        var time = new ManualTimeProvider();
        var limiter = new RateLimiter(time);
        limiter.SetSpeed(1_000_000);
        Assert.Equal(TimeSpan.FromMilliseconds(100), limiter.CalculateDelay(100_000));
        time.Advance(TimeSpan.FromSeconds(5));

        // An idle job does not bank quota, nor pay for the past.
        Assert.Equal(TimeSpan.Zero, limiter.CalculateDelay(99_999));
        Assert.Equal(TimeSpan.FromMilliseconds(100), limiter.CalculateDelay(1));
    }

    [Fact]
    public void Set_speed_applies_to_work_counted_afterwards_and_refuses_a_negative_speed()
    {
        var time = new ManualTimeProvider();
        var limiter = new RateLimiter(time);
        limiter.SetSpeed(1_000_000);
        Assert.Equal(TimeSpan.FromMilliseconds(100), limiter.CalculateDelay(100_000));
        limiter.SetSpeed(0);
        Assert.Equal(TimeSpan.Zero, limiter.CalculateDelay(100_000_000));
        Assert.Throws<ArgumentOutOfRangeException>(() => limiter.SetSpeed(-1));
        Assert.Equal(0, limiter.Speed);
    }

    /// <summary>
    /// The documented guarantee, B bytes at S take at least B/S minus one slice, for pieces smaller and
    /// larger than a slice's quota and for callers that wake exactly on time or late (as timers do); and
    /// the limiter does not take much longer than B/S either.
    /// </summary>
    [Theory]
    [InlineData(4096, 0)]
    [InlineData(4096, 7)]
    [InlineData(65536, 0)]
    [InlineData(65536, 1)]
    [InlineData(65536, 30)]
    [InlineData(104_857, 3)]
    [InlineData(200_000, 0)]
    [InlineData(200_000, 1)]
    [InlineData(200_000, 13)]
    [InlineData(1 << 20, 0)]
    [InlineData(1 << 20, 5)]
    [InlineData(1_500_000, 20)]
    public void B_bytes_at_speed_S_take_at_least_B_over_S_minus_one_slice(long piece, int lateMs)
    {
        const long speed = 1 << 20;
        const long total = 8L << 20;
        var time = new ManualTimeProvider();
        var limiter = new RateLimiter(time);
        limiter.SetSpeed(speed);
        var late = TimeSpan.FromMilliseconds(lateMs);

        var waits = 0;
        for (long done = 0; done < total; done += piece)
        {
            var delay = limiter.CalculateDelay(Math.Min(piece, total - done));
            if (delay > TimeSpan.Zero)
            {
                time.Advance(delay + late);
                waits++;
            }
        }

        var ideal = TimeSpan.FromSeconds((double)total / speed);
        Assert.True(time.Elapsed >= ideal - Slice, $"{total} bytes at {speed} B/s in {time.Elapsed.TotalMilliseconds} ms, under {(ideal - Slice).TotalMilliseconds} ms");
        Assert.True(time.Elapsed <= ideal + Slice + waits * late, $"{total} bytes at {speed} B/s took {time.Elapsed.TotalMilliseconds} ms, {waits} waits");
    }

    // ----- A rate-limited mirror on fake time -----

    [Theory]
    [InlineData(329_330, 7)]
    [InlineData(1 << 20, 10)]
    [InlineData(200_000, 33)]
    public async Task A_mirror_at_speed_S_reaches_READY_no_sooner_than_B_over_S_minus_one_slice(long speed, int stepMs)
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(time: time);
        var start = time.GetUtcNow();
        var job = await rig.StartAsync(MirrorRig.Options() with { Speed = speed });
        Assert.Equal(speed, job.Speed);

        var ready = await AdvanceUntilReadyAsync(rig, job, time, TimeSpan.FromMilliseconds(stepMs));

        // B: the data to copy (the zero ranges of a zero-initialised target are not dirtied).
        const long data = 9 * MirrorRig.Chunk;
        Assert.True(ready.Len >= data, $"len {ready.Len} is less than the {data} bytes of data");
        Assert.Equal(ready.Len, ready.Offset);
        Assert.Equal(speed, ready.Speed);
        var elapsed = ready.Timestamp - start;
        var least = TimeSpan.FromSeconds((double)data / speed) - Slice;
        Assert.True(elapsed >= least, $"READY after {elapsed.TotalMilliseconds} ms of fake time, under {least.TotalMilliseconds} ms");

        // And not absurdly later: the limit slows the job, it does not stall it.
        Assert.True(elapsed <= least + TimeSpan.FromSeconds(1), $"READY only after {elapsed.TotalMilliseconds} ms of fake time");

        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        await rig.AssertTargetEqualsSourceAsync();
    }

    /// <summary>
    /// QEMU's mirror_iteration charges zero and discard ranges to the limit as if copied unless the target
    /// unmaps on write-zeroes with discard=unmap (write_zeroes_ok). A target that ignores discards, and does
    /// not read as zeroes, gets every chunk dirtied: the 7 zero chunks are written as zeroes and charged with
    /// the 9 data chunks, so READY takes the whole disk's time at this speed, not only the data's.
    /// </summary>
    [Fact]
    public async Task Zero_ranges_count_against_the_speed_limit_on_a_target_that_does_not_unmap()
    {
        const long speed = 1 << 20;
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(targetZeroInit: false, time: time);
        var target = await DiscardIgnoredFilter.OpenAsync(rig.Graph, "dst-ignore", rig.Target);
        var start = time.GetUtcNow();
        var job = await MirrorJob.StartAsync(rig.Manager, rig.Graph, rig.Source, target, MirrorRig.Options() with { Speed = speed });

        var ready = await AdvanceUntilReadyAsync(rig, job, time, TimeSpan.FromMilliseconds(10));

        // The whole disk went through the loop (len counts zeroed bytes as copied), and took its time.
        Assert.Equal(MirrorRig.DefaultSize, ready.Len);
        var least = TimeSpan.FromSeconds((double)MirrorRig.DefaultSize / speed) - Slice;
        var elapsed = ready.Timestamp - start;
        Assert.True(elapsed >= least, $"READY after {elapsed.TotalMilliseconds} ms of fake time, under {least.TotalMilliseconds} ms: zero ranges were not charged");

        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task Raising_the_speed_to_unlimited_lets_the_job_finish_without_fake_time_passing()
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(time: time);
        var job = await rig.StartAsync(MirrorRig.Options() with { Speed = 64 * 1024 });

        // The first chunk uses up a slice's quota at once; the job sleeps on the fake clock, which the
        // test does not move.
        await WaitParkedAsync(job);
        Assert.Equal(JobStatus.Running, job.Status);
        Assert.True(job.DirtyBytes > 0);
        var frozen = time.Elapsed;

        job.SetSpeed(0);
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        Assert.Equal(frozen, time.Elapsed);
        Assert.Equal(0, job.Speed);
        Assert.Equal(0, Assert.Single(rig.Log.Events.OfType<BlockJobReadyEvent>()).Speed);

        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task A_negative_speed_is_refused_and_changes_nothing()
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(time: time);
        var job = await rig.StartAsync(MirrorRig.Options() with { Speed = 64 * 1024 });
        await WaitParkedAsync(job);
        var events = rig.Log.Count;
        var timers = time.PendingTimers;

        var ex = Assert.Throws<JobException>(() => job.SetSpeed(-1));
        Assert.Equal("Invalid parameter 'speed'", ex.Message);
        Assert.Equal(64 * 1024, job.Speed);
        Assert.Equal(64 * 1024, job.GetInfo().Speed);
        Assert.Equal(events, rig.Log.Count);
        Assert.Equal(timers, time.PendingTimers);
        Assert.False(job.IsBusy);
        Assert.Equal(JobStatus.Running, job.Status);
        await job.CancelAsync(force: true);
        await MirrorTestRunner.WaitFinishedAsync(job);
    }

    /// <summary>Moves fake time in steps, each only once the job has parked again, until BLOCK_JOB_READY.</summary>
    static async Task<BlockJobReadyEvent> AdvanceUntilReadyAsync(MirrorRig rig, MirrorJob job, ManualTimeProvider time, TimeSpan step)
    {
        using var cts = new CancellationTokenSource(MirrorTestRunner.Limit);
        while (true)
        {
            if (rig.Log.Events.OfType<BlockJobReadyEvent>().FirstOrDefault() is { } ready)
            {
                return ready;
            }

            Assert.False(job.Finished.IsCompleted, $"the job ended before READY: {job.Error}");
            Assert.False(cts.IsCancellationRequested, $"no READY: {MirrorTestRunner.Describe(job)}, fake time {time.Elapsed}");
            if (job.IsBusy)
            {
                await Task.Delay(1, CancellationToken.None);
                continue;
            }

            time.Advance(step);
        }
    }

    static async Task WaitParkedAsync(MirrorJob job)
    {
        using var cts = new CancellationTokenSource(MirrorTestRunner.Limit);
        while (job.IsBusy)
        {
            Assert.False(cts.IsCancellationRequested, $"the job never parked: {MirrorTestRunner.Describe(job)}");
            await Task.Delay(1, CancellationToken.None);
        }
    }
}
