using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>A running mirror's measured progress (rates, forecast) and its speed limit after READY, on fake time.</summary>
public sealed class MirrorProgressTests
{
    const long Chunk = MirrorRig.Chunk;

    [Fact]
    public async Task Progress_is_unmeasured_until_the_copy_has_run_a_second_and_a_stalled_job_does_not_converge()
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(time: time);
        var job = await rig.StartAsync(MirrorRig.Options() with { Speed = 4096 });
        await MirrorTestRunner.WaitParkedAsync(job);

        var progress = job.GetProgress();
        Assert.False(progress.Measured);
        Assert.Null(progress.Converging);
        Assert.Null(progress.Eta);
        Assert.True(progress.Remaining >= job.DirtyBytes && progress.Remaining > 0, $"remaining {progress.Remaining}, dirty {job.DirtyBytes}");

        // A second later (the limit still holds the job: two chunks at 4 KiB/s take 32 s) nothing has moved:
        // measured now, and at this rate it will not converge.
        time.Advance(TimeSpan.FromSeconds(1));
        progress = job.GetProgress();
        Assert.True(progress.Measured);
        Assert.Equal((0.0, 0.0), (progress.CopyRate, progress.DirtyRate));
        Assert.False(progress.Converging);

        await job.CancelAsync(force: true);
        await MirrorTestRunner.WaitFinishedAsync(job);
    }

    [Fact]
    public async Task After_READY_writers_faster_than_the_speed_limit_show_as_a_job_that_will_not_converge_and_the_limit_holds()
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(time: time);

        // sync=none: READY at once, with nothing copied; from then on only the writes below are dirty.
        var job = await rig.StartAsync(MirrorRig.Options() with { Sync = MirrorSyncMode.None, Speed = 4096 });
        await MirrorTestRunner.WaitParkedAsync(job, JobStatus.Ready);
        var copiedBefore = job.ProgressCurrent;
        Assert.Equal(0, job.GetProgress().Remaining);

        // Three chunks apart from each other, so that each is one copy and the limit acts between them.
        foreach (var chunk in new[] { 0, 4, 8 })
        {
            await rig.Vm.WriteAsync(chunk * Chunk, new byte[Chunk]);
        }

        // The job wakes from its idle slice, copies one chunk, and then owes the limit 16 s (64 KiB at 4 KiB/s).
        time.Advance(TimeSpan.FromMilliseconds(100));
        await WaitRemainingAsync(job, 2 * Chunk);
        time.Advance(TimeSpan.FromMilliseconds(900));

        var progress = job.GetProgress();
        Assert.True(progress.Measured);
        Assert.Equal(2 * Chunk, progress.Remaining);
        Assert.Equal(Chunk, progress.CopyRate, 3);
        Assert.Equal(3 * Chunk, progress.DirtyRate, 3);
        Assert.False(progress.Converging);
        Assert.Null(progress.Eta);
        Assert.Equal(copiedBefore + Chunk, job.ProgressCurrent);

        // QEMU stops applying the limit at READY and would have copied all three at once; ours waits.
        time.Advance(TimeSpan.FromSeconds(14));
        await MirrorTestRunner.WaitParkedAsync(job, JobStatus.Ready);
        Assert.Equal(2 * Chunk, job.GetProgress().Remaining);
        time.Advance(TimeSpan.FromSeconds(2));
        await WaitRemainingAsync(job, Chunk);

        job.SetSpeed(0);
        await WaitRemainingAsync(job, 0);
        Assert.True(job.GetProgress().Converging);
        await job.CancelAsync(force: true);
        await MirrorTestRunner.WaitFinishedAsync(job);
    }

    static async Task WaitRemainingAsync(MirrorJob job, long remaining)
    {
        using var cts = new CancellationTokenSource(MirrorTestRunner.Limit);
        while (job.GetProgress().Remaining != remaining || job.IsBusy)
        {
            Assert.False(cts.IsCancellationRequested, $"remaining never reached {remaining}: {MirrorTestRunner.Describe(job)}");
            await Task.Delay(1, CancellationToken.None);
        }
    }
}
