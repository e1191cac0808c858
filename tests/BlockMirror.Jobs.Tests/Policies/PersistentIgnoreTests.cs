using BlockMirror.Block.Io;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Tests.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Policies;

/// <summary>
/// on-error=ignore against an error that never goes away: the commit tries the same step again forever,
/// as QEMU's does, but waits on its clock between tries (it must not take a core), and a cancel ends it.
/// </summary>
public sealed class PersistentIgnoreTests
{
    [Fact]
    public async Task An_intermediate_commit_retries_only_when_its_clock_moves_and_a_cancel_ends_it()
    {
        var time = new ManualTimeProvider();
        await using var chain = await PolicyChain.CreateAsync(time);
        var (debug, _) = await chain.InjectAsync(PolicyJob.IntermediateCommit, FaultSide.SourceRead, BlockErrno.EIO, once: false);
        var job = await chain.StartAsync(PolicyJob.IntermediateCommit, BlockdevOnError.Ignore);

        // With the clock stopped the job parks after each failed try; each tick of the clock buys one more.
        for (var tries = 1; tries <= 3; tries++)
        {
            await WaitParkedOnClockAsync(job, time, debug, tries);
            Assert.Equal(tries, job.IgnoredErrors);
            time.Advance(TimeSpan.FromSeconds(1));
        }

        await WaitParkedOnClockAsync(job, time, debug, 4);
        await job.CancelAsync();
        await job.Finished.WaitAsync(MirrorTestRunner.Limit);

        Assert.Equal(4, chain.Log.Events.OfType<BlockJobErrorEvent>().Count(e => e is { IsRead: true, Action: BlockErrorAction.Ignore }));
        Assert.Equal(["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"], chain.Log.Names.TakeLast(4));
    }

    /// <summary>Waits until the job has failed <paramref name="tries"/> times and sleeps on a timer of the clock.</summary>
    static async Task WaitParkedOnClockAsync(BlockJob job, ManualTimeProvider time, Block.Drivers.Blkdebug.BlkdebugFilter debug, int tries)
    {
        using var cts = new CancellationTokenSource(MirrorTestRunner.Limit);
        while (debug.InjectedCount < tries || job.IsBusy || time.PendingTimers == 0)
        {
            Assert.False(cts.IsCancellationRequested, $"the job never parked after try {tries}: {debug.InjectedCount} tries, busy {job.IsBusy}, status {job.Status.ToWireName()}");
            await Task.Delay(1, CancellationToken.None);
        }

        Assert.Equal(tries, debug.InjectedCount);
    }
}
