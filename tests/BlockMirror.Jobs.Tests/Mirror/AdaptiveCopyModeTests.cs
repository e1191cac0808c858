using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// The adaptive copy mode on a running mirror, on fake time: a writer that outruns the speed limit makes
/// it block guest writes, the job then converges, and from READY on writes block for good.
/// </summary>
public sealed class AdaptiveCopyModeTests
{
    const long Chunk = MirrorRig.Chunk;
    const long Size = 32L << 20;
    static readonly TimeSpan Step = TimeSpan.FromMilliseconds(125);

    [Fact]
    public async Task A_writer_faster_than_the_copy_makes_writes_block_and_the_job_then_converges()
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(size: Size, time: time);

        // 1 MiB/s: each two-chunk buffer owes the limit 125 ms, one step.
        var job = await rig.StartAsync(MirrorRig.Options() with { Speed = 1 << 20, CopyMode = MirrorCopyMode.Adaptive });
        Assert.False(job.WritesBlocking);

        // The writer dirties three fresh chunks a step (1.5 MiB/s), from 1 MiB on: the copy loses ground.
        var next = 1L << 20;
        var data = Enumerable.Repeat((byte)0x5a, (int)Chunk).ToArray();
        var steps = 0;
        while (!job.WritesBlocking)
        {
            Assert.True(++steps < 200, $"writes never blocked: {MirrorTestRunner.Describe(job)}, {job.GetProgress()}");
            for (var i = 0; i < 3 && next < Size; i++, next += Chunk)
            {
                await rig.Vm.WriteAsync(next, data);
            }

            await StepAsync(time, job);
        }

        // Not before the verdict could have been reached: a second to measure, and the hold.
        Assert.True(steps * Step >= MirrorRates.MinSpan + AdaptiveCopyPolicy.Hold, $"blocked after {steps} steps");
        Assert.Equal(MirrorCopyMode.Adaptive, job.CopyMode);

        // Writes now reach the target as they complete, so the same writer no longer holds the job back.
        for (var s = 0; job.Status != JobStatus.Ready; s++)
        {
            Assert.True(s < 2000, $"no READY: {MirrorTestRunner.Describe(job)}, {job.GetProgress()}");
            if (s % 2 == 0 && next < Size)
            {
                await rig.Vm.WriteAsync(next, data);
                next += Chunk;
            }

            await StepAsync(time, job);
        }

        // READY makes write-blocking final (a probe may have let go for a while before: the writer had slowed
        // down): long after, with nothing to copy, writes still block.
        for (var s = 0; s < 200; s++)
        {
            await StepAsync(time, job);
        }

        await MirrorTestRunner.WaitParkedAsync(job, JobStatus.Ready);
        Assert.True(job.WritesBlocking);

        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task A_job_that_gains_on_its_writer_never_blocks_writes()
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(size: Size, time: time);
        var job = await rig.StartAsync(MirrorRig.Options() with { Speed = 1 << 20, CopyMode = MirrorCopyMode.Adaptive });

        // One fresh chunk every other step: 256 KiB/s against a 1 MiB/s copy.
        var next = 1L << 20;
        var data = Enumerable.Repeat((byte)0x6b, (int)Chunk).ToArray();
        for (var s = 0; job.Status != JobStatus.Ready; s++)
        {
            Assert.True(s < 2000, $"no READY: {MirrorTestRunner.Describe(job)}");
            Assert.False(job.WritesBlocking, $"writes blocked at step {s}: {job.GetProgress()}");
            if (s % 2 == 0 && next < Size)
            {
                await rig.Vm.WriteAsync(next, data);
                next += Chunk;
            }

            await StepAsync(time, job);
        }

        await job.CancelAsync(force: true);
        await MirrorTestRunner.WaitFinishedAsync(job);
    }

    /// <summary>Moves the clock one step and waits until the job has done what that allowed and parked again.</summary>
    static async Task StepAsync(ManualTimeProvider time, MirrorJob job)
    {
        time.Advance(Step);
        using var limit = new CancellationTokenSource(MirrorTestRunner.Limit);
        while (job.IsBusy && !job.Finished.IsCompleted)
        {
            Assert.False(limit.IsCancellationRequested, $"the job never parked: {MirrorTestRunner.Describe(job)}");
            await Task.Delay(1, CancellationToken.None);
        }
    }
}
