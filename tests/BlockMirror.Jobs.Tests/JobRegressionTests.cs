using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests;

/// <summary>Bugs in the job layer (state machine, job manager, rate limiter) found by the tests, kept as named tests.</summary>
public sealed class JobRegressionTests
{
    /// <summary>
    /// Found by the verb matrix: set-speed wakes the body so that a shorter sleep takes effect, and the
    /// wake-up ended a pause: the paused job went back to running while still counted as paused.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Set_speed_on_a_paused_job_leaves_it_paused(bool ready)
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager);
        await job.WaitParkedAsync(JobStatus.Running);
        if (ready)
        {
            job.MakeReady();
            await job.WaitParkedAsync(JobStatus.Ready);
        }

        var paused = ready ? JobStatus.Standby : JobStatus.Paused;
        job.Pause();
        await job.WaitParkedAsync(paused);
        var mark = log.Count;

        job.SetSpeed(1 << 20);
        job.SetSpeed(0);
        await Task.Delay(20);
        Assert.Equal(paused, job.Status);
        Assert.True(job.IsPaused);
        Assert.Equal(mark, log.Count);

        job.Resume();
        await job.WaitParkedAsync(ready ? JobStatus.Ready : JobStatus.Running);
        await job.CancelAsync(force: true);
        await job.Finished.WaitAsync(TestJob.Limit);
    }

    /// <summary>
    /// Found by the verb matrix: complete is accepted in standby (QEMU 7.2), and its wake-up let the paused
    /// job finish while the user still had it paused. QEMU completes it only once resumed.
    /// </summary>
    [Fact]
    public async Task Complete_in_standby_takes_effect_only_after_resume()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager);
        await job.WaitParkedAsync(JobStatus.Running);
        job.MakeReady();
        await job.WaitParkedAsync(JobStatus.Ready);
        job.Pause();
        await job.WaitParkedAsync(JobStatus.Standby);

        job.Complete();
        await Task.Delay(20);
        Assert.Equal(JobStatus.Standby, job.Status);
        Assert.False(job.Finished.IsCompleted);

        job.Resume();
        await job.Finished.WaitAsync(TestJob.Limit);
        Assert.Equal(["standby", "ready", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"], log.Names.Skip(4));
    }

    /// <summary>
    /// Found by the lifecycle tests: only MirrorJob.StartAsync checked an id's form; JobManager.Register,
    /// the one step every job passes, registered "0job" or "" without complaint. QEMU's job_create checks both.
    /// </summary>
    [Fact]
    public void Register_refuses_a_malformed_job_id()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = new TestJob(manager, "0job");
        var ex = Assert.Throws<JobException>(() => manager.Register(job));
        Assert.Equal("Invalid job ID '0job'", ex.Message);
        Assert.Empty(manager.Jobs);
        Assert.Equal(JobStatus.Undefined, job.Status);
        Assert.Equal(0, log.Count);
    }

    /// <summary>
    /// Found by the rate-limit tests: the limiter rounded the slices a piece of work claims down to whole
    /// slices, and a caller that woke after the slice end (a real timer always does) started afresh, so
    /// the fraction was never paid: 200 000-byte pieces at 1 MiB/s ran at about twice the speed.
    /// </summary>
    [Fact]
    public void Rate_limiter_charges_the_fraction_of_a_slice_to_a_caller_that_wakes_late()
    {
        var time = new ManualTimeProvider();
        var limiter = new RateLimiter(time);
        limiter.SetSpeed(1 << 20);
        for (var piece = 0; piece < 42; piece++)
        {
            var delay = limiter.CalculateDelay(200_000);
            if (delay > TimeSpan.Zero)
            {
                time.Advance(delay + TimeSpan.FromMilliseconds(1));
            }
        }

        // 8 400 000 bytes at 1 MiB/s: at least 8.01 s less one slice.
        Assert.True(time.Elapsed >= TimeSpan.FromSeconds(7.9), $"took {time.Elapsed.TotalMilliseconds} ms of fake time");
    }
}
