using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>Drives a mirror job the way a user does, with time limits so a bug fails instead of hanging.</summary>
static class MirrorTestRunner
{
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    /// <summary>Waits for READY (or the end of the job), completes, and waits for the end.</summary>
    public static async Task CompleteWhenReadyAsync(JobManager manager, MirrorJob job)
    {
        await WaitReadyAsync(manager, job);
        job.Complete();
        await WaitFinishedAsync(job);
        Assert.Null(job.Error);
    }

    /// <summary>Waits until the job's body is parked (sleeping or paused) in <paramref name="status"/>.</summary>
    public static async Task WaitParkedAsync(MirrorJob job, JobStatus status = JobStatus.Running)
    {
        using var cts = new CancellationTokenSource(Limit);
        while (job.IsBusy || job.Status != status)
        {
            Assert.False(cts.IsCancellationRequested, $"the job never parked in {status.ToWireName()}: {Describe(job)}");
            await Task.Delay(1, CancellationToken.None);
        }
    }

    public static async Task WaitFinishedAsync(MirrorJob job)
    {
        try
        {
            await job.Finished.WaitAsync(Limit);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"job did not end within {Limit.TotalSeconds} s: {Describe(job)}");
        }
    }

    /// <summary>Everything worth knowing when a job seems stuck.</summary>
    public static string Describe(MirrorJob job)
    {
        var info = job.GetInfo();
        return $"status {info.Status.ToWireName()}, dirty {job.DirtyBytes}, offset {info.Offset}, len {info.Len}, busy {info.Busy}, paused {info.Paused}, speed {info.Speed}, io-status {info.IoStatus.ToWireName()}";
    }

    public static async Task WaitReadyAsync(JobManager manager, MirrorJob job)
    {
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var subscription = manager.Events.Subscribe(e =>
        {
            if (e is BlockJobReadyEvent r && r.Device == job.Id)
            {
                ready.TrySetResult();
            }
        });
        if (job.Status is JobStatus.Ready or JobStatus.Standby)
        {
            return;
        }

        try
        {
            await Task.WhenAny(ready.Task, job.Finished).WaitAsync(Limit);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"no READY within {Limit.TotalSeconds} s: {Describe(job)}");
        }

        Assert.True(ready.Task.IsCompleted, $"job ended before READY: {job.Error}");
    }
}
