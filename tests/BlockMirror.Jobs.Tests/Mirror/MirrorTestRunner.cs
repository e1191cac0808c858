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
        await job.Finished.WaitAsync(Limit);
        Assert.Null(job.Error);
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

        await Task.WhenAny(ready.Task, job.Finished).WaitAsync(Limit);
        Assert.True(ready.Task.IsCompleted, $"job ended before READY: {job.Error}");
    }
}
