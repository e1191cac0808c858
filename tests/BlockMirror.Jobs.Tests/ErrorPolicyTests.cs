using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;
using BlockMirror.Jobs.Tests.Mirror;

namespace BlockMirror.Jobs.Tests;

/// <summary>
/// Every error policy driven through blkdebug on a real mirror: source = blkdebug over memory, target =
/// blkdebug over memory, 1 MiB with data and zero ranges (see <see cref="MirrorRig"/>).
/// </summary>
public sealed class ErrorPolicyTests
{
    /// <summary>A chunk that holds data (inside [0, 512 KiB)), so a copy that skipped it would show.</summary>
    const long FaultOffset = 4 * MirrorRig.Chunk;

    static BlkdebugRule ReadRule(BlockErrno errno = BlockErrno.EIO, bool once = false) =>
        new(BlockOperation.Read, FaultOffset, MirrorRig.Chunk, errno, Once: once);

    static BlkdebugRule WriteRule(BlockErrno errno = BlockErrno.EIO, bool once = false) =>
        new(BlockOperation.Write, FaultOffset, MirrorRig.Chunk, errno, Once: once);

    [Theory]
    [InlineData(BlockdevOnError.Report, BlockErrno.EIO, BlockErrorAction.Report)]
    [InlineData(BlockdevOnError.Report, BlockErrno.ENOSPC, BlockErrorAction.Report)]
    [InlineData(BlockdevOnError.Ignore, BlockErrno.EIO, BlockErrorAction.Ignore)]
    [InlineData(BlockdevOnError.Ignore, BlockErrno.ENOSPC, BlockErrorAction.Ignore)]
    [InlineData(BlockdevOnError.Stop, BlockErrno.EIO, BlockErrorAction.Stop)]
    [InlineData(BlockdevOnError.Stop, BlockErrno.ENOSPC, BlockErrorAction.Stop)]
    [InlineData(BlockdevOnError.Enospc, BlockErrno.EIO, BlockErrorAction.Report)]
    [InlineData(BlockdevOnError.Enospc, BlockErrno.ENOSPC, BlockErrorAction.Stop)]
    [InlineData(BlockdevOnError.Auto, BlockErrno.EIO, BlockErrorAction.Report)]
    [InlineData(BlockdevOnError.Auto, BlockErrno.ENOSPC, BlockErrorAction.Stop)]
    public void The_policy_decides_the_action_by_errno(BlockdevOnError policy, BlockErrno errno, BlockErrorAction expected) =>
        Assert.Equal(expected, ErrorPolicy.Decide(policy, errno));

    // ----- report -----

    [Fact]
    public async Task Report_a_source_read_error_fails_the_job()
    {
        await using var rig = await MirrorRig.CreateAsync();
        rig.SourceDebug.AddRule(ReadRule());
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitFinishedAsync(job);

        AssertFailedWithOneError(rig, job, "read");
        rig.AssertJobLeftNothing(usersOn: rig.Source);
    }

    [Fact]
    public async Task Report_a_target_write_error_fails_the_job()
    {
        await using var rig = await MirrorRig.CreateAsync();
        rig.TargetDebug.AddRule(WriteRule());
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitFinishedAsync(job);

        AssertFailedWithOneError(rig, job, "write");
        rig.AssertJobLeftNothing(usersOn: rig.Source);
    }

    [Fact]
    public async Task Report_a_target_flush_error_at_READY_fails_the_job()
    {
        await using var rig = await MirrorRig.CreateAsync();
        rig.TargetDebug.AddRule(new BlkdebugRule(BlockOperation.Flush));
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitFinishedAsync(job);

        // Everything was copied; the flush before READY failed, so READY never came.
        AssertFailedWithOneError(rig, job, "write");
        Assert.Equal(1, rig.TargetDebug.InjectedCount);
        rig.AssertJobLeftNothing(usersOn: rig.Source);
    }

    [Fact]
    public async Task The_target_is_flushed_during_the_bulk_copy_and_a_failure_there_goes_through_the_policy()
    {
        await using var rig = await MirrorRig.CreateAsync();
        rig.TargetDebug.AddRule(new BlkdebugRule(BlockOperation.Flush));

        // A flush every 256 KiB copied, and a copy slow enough (1 MiB/s) for it to fail well before the end.
        var job = await rig.StartAsync(MirrorRig.Options() with { BulkFlushBytes = 256 << 10, Speed = 1 << 20 });
        await MirrorTestRunner.WaitFinishedAsync(job);

        // Only the flush before READY would come after the whole disk was copied.
        AssertFailedWithOneError(rig, job, "write");
        Assert.InRange(job.GetInfo().Offset, 256 << 10, MirrorRig.DefaultSize - MirrorRig.Chunk);
        rig.AssertJobLeftNothing(usersOn: rig.Source);
    }

    static void AssertFailedWithOneError(MirrorRig rig, MirrorJob job, string operation)
    {
        Assert.Equal(
            ["created", "running", $"BLOCK_JOB_ERROR {operation} report", "aborting", "BLOCK_JOB_COMPLETED (error)", "concluded", "null"],
            rig.Log.Names);
        var error = Assert.Single(rig.Log.Events.OfType<BlockJobErrorEvent>());
        Assert.Equal(("mirror0", operation == "read"), (error.Device, error.IsRead));
        Assert.Equal("Input/output error", Assert.Single(rig.Log.Events.OfType<BlockJobCompletedEvent>()).Error);
        Assert.Equal("Input/output error", job.Error);
        Assert.Equal(BlockErrno.EIO, Assert.IsType<BlockIOException>(job.Failure).Errno);
    }

    // ----- ignore -----

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Ignore_carries_on_counts_the_error_and_copies_the_range_again(bool sourceSide)
    {
        await using var rig = await MirrorRig.CreateAsync();
        var options = MirrorRig.Options();
        if (sourceSide)
        {
            rig.SourceDebug.AddRule(ReadRule(once: true));
            options = options with { OnSourceError = BlockdevOnError.Ignore };
        }
        else
        {
            rig.TargetDebug.AddRule(WriteRule(once: true));
            options = options with { OnTargetError = BlockdevOnError.Ignore };
        }

        var job = await rig.StartAsync(options);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);

        var operation = sourceSide ? "read" : "write";
        Assert.Equal(
            ["created", "running", $"BLOCK_JOB_ERROR {operation} ignore", "ready", "BLOCK_JOB_READY", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"],
            rig.Log.Names);
        Assert.Equal(1, job.IgnoredErrors);
        Assert.Equal(IoStatus.Ok, job.IoStatus);
        Assert.Equal(1, (sourceSide ? rig.SourceDebug : rig.TargetDebug).InjectedCount);

        // The failed range was dirtied again and copied on a later pass.
        await rig.AssertTargetEqualsSourceAsync();
        rig.AssertJobLeftNothing(usersOn: rig.Target);
    }

    // ----- stop -----

    [Theory]
    [InlineData(true, BlockErrno.EIO, IoStatus.Failed)]
    [InlineData(false, BlockErrno.EIO, IoStatus.Failed)]
    [InlineData(true, BlockErrno.ENOSPC, IoStatus.Nospace)]
    [InlineData(false, BlockErrno.ENOSPC, IoStatus.Nospace)]
    public async Task Stop_pauses_the_job_and_resume_finishes_it(bool sourceSide, BlockErrno errno, IoStatus ioStatus)
    {
        await using var rig = await MirrorRig.CreateAsync();
        var options = MirrorRig.Options();
        BlkdebugFilter debug;
        BlkdebugRule rule;
        if (sourceSide)
        {
            (debug, rule) = (rig.SourceDebug, ReadRule(errno));
            options = options with { OnSourceError = BlockdevOnError.Stop };
        }
        else
        {
            (debug, rule) = (rig.TargetDebug, WriteRule(errno));
            options = options with { OnTargetError = BlockdevOnError.Stop };
        }

        // A rule that keeps failing: the job must stay stopped until the user has fixed the cause.
        debug.AddRule(rule);
        var job = await rig.StartAsync(options);
        var operation = sourceSide ? "read" : "write";
        await AssertStoppedAsync(rig, job, JobStatus.Paused, ioStatus);
        Assert.Equal(["created", "running", $"BLOCK_JOB_ERROR {operation} stop", "paused"], rig.Log.Names);

        debug.RemoveRule(rule);
        job.Resume();
        Assert.Equal(IoStatus.Ok, job.IoStatus);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);

        Assert.Equal(
            ["created", "running", $"BLOCK_JOB_ERROR {operation} stop", "paused", "running", "ready", "BLOCK_JOB_READY", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"],
            rig.Log.Names);
        Assert.Equal(1, debug.InjectedCount);
        Assert.Equal(0, job.IgnoredErrors);
        await rig.AssertTargetEqualsSourceAsync();
        rig.AssertJobLeftNothing(usersOn: rig.Target);
    }

    [Fact]
    public async Task Stop_after_READY_leaves_the_job_in_standby()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(MirrorRig.Options() with { OnTargetError = BlockdevOnError.Stop });
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);

        // A new write to the source must be copied; the target refuses it.
        var rule = rig.TargetDebug.AddRule(WriteRule());
        var data = Enumerable.Repeat((byte)0x3c, 4096).ToArray();
        await rig.Vm.WriteAsync(FaultOffset + 8192, data);
        await AssertStoppedAsync(rig, job, JobStatus.Standby, IoStatus.Failed);

        rig.TargetDebug.RemoveRule(rule);
        job.Resume();
        Assert.Equal(IoStatus.Ok, job.IoStatus);
        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        Assert.Contains("BLOCK_JOB_ERROR write stop", rig.Log.Names);
        Assert.Equal(["standby", "ready", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"], rig.Log.Names.Where(n => !n.StartsWith("BLOCK_JOB_ERROR", StringComparison.Ordinal)).Skip(4));
        await rig.AssertTargetEqualsSourceAsync();
    }

    static Task AssertStoppedAsync(MirrorRig rig, MirrorJob job, JobStatus status, IoStatus ioStatus) =>
        StoppedJob.AssertStoppedAsync(rig.Log, job, status, ioStatus);

    // ----- enospc -----

    [Fact]
    public async Task Enospc_stops_on_ENOSPC()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var rule = rig.TargetDebug.AddRule(WriteRule(BlockErrno.ENOSPC));
        var job = await rig.StartAsync(MirrorRig.Options() with { OnTargetError = BlockdevOnError.Enospc });
        await AssertStoppedAsync(rig, job, JobStatus.Paused, IoStatus.Nospace);
        Assert.Equal(["created", "running", "BLOCK_JOB_ERROR write stop", "paused"], rig.Log.Names);

        rig.TargetDebug.RemoveRule(rule);
        job.Resume();
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task Enospc_reports_EIO()
    {
        await using var rig = await MirrorRig.CreateAsync();
        rig.TargetDebug.AddRule(WriteRule(BlockErrno.EIO));
        var job = await rig.StartAsync(MirrorRig.Options() with { OnTargetError = BlockdevOnError.Enospc });
        await MirrorTestRunner.WaitFinishedAsync(job);
        AssertFailedWithOneError(rig, job, "write");
    }
}
