using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Tests.Mirror;

namespace BlockMirror.Jobs.Tests;

/// <summary>Checks on a job that a <c>stop</c> error policy has stopped, shared by every job type.</summary>
static class StoppedJob
{
    /// <summary>The job parks as if the user had paused it, with the I/O status set, and stays so.</summary>
    public static async Task AssertStoppedAsync(EventLog log, BlockJob job, JobStatus status, IoStatus ioStatus)
    {
        await log.WaitForAsync(e => e is BlockJobErrorEvent { Action: BlockErrorAction.Stop }, "BLOCK_JOB_ERROR stop");
        await WaitParkedAsync(job, status);
        Assert.True(job.IsUserPaused);
        var info = job.GetInfo();
        Assert.Equal((true, status, ioStatus), (info.Paused, info.Status, info.IoStatus));
        Assert.Equal(ioStatus, job.IoStatus);
        Assert.Null(job.Error);

        // Stopped means stopped: nothing moves while the user has not resumed.
        var events = log.Count;
        await Task.Delay(20);
        Assert.Equal(status, job.Status);
        Assert.Equal(events, log.Count);
        Assert.Throws<JobException>(job.Pause);
    }

    static async Task WaitParkedAsync(Job job, JobStatus status)
    {
        using var cts = new CancellationTokenSource(MirrorTestRunner.Limit);
        while (job.IsBusy || job.Status != status)
        {
            Assert.False(cts.IsCancellationRequested, $"job never parked in {status.ToWireName()}: now {job.Status.ToWireName()}");
            await Task.Delay(1, CancellationToken.None);
        }
    }
}
