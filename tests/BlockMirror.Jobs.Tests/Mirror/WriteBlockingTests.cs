using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// copy-mode write-blocking: guest writes go to source and target before they are acknowledged, wait for
/// copies of their chunks, leave dirty unaligned edges to the loop, and never fail for the target.
/// </summary>
/// <remarks>
/// Most tests park the job on a clock that never moves (speed 4096 B/s: it copies its first run of two
/// chunks, [0, 128 KiB), then sleeps), so what reaches the target afterwards came through the guest's writes.
/// The rig's source holds data in [0, 512 KiB) and [640, 704 KiB) (9 chunks); the target reads zeroes.
/// </remarks>
public sealed class WriteBlockingTests
{
    const long Chunk = MirrorRig.Chunk;

    static MirrorOptions Parked(MirrorCopyMode mode) => MirrorRig.Options() with { Speed = 4096, CopyMode = mode };

    static async Task<(MirrorRig Rig, MirrorJob Job)> StartParkedAsync(MirrorCopyMode mode, BlockdevOnError onTargetError = BlockdevOnError.Report)
    {
        var rig = await MirrorRig.CreateAsync(time: new ManualTimeProvider());
        var job = await rig.StartAsync(Parked(mode) with { OnTargetError = onTargetError });
        await MirrorTestRunner.WaitParkedAsync(job);
        Assert.Equal(7 * Chunk, job.DirtyBytes);
        return (rig, job);
    }

    static byte[] Pattern(int length, byte seed)
    {
        var bytes = new byte[length];
        for (var i = 0; i < length; i++)
        {
            bytes[i] = (byte)(seed + i * 7);
        }

        return bytes;
    }

    static async Task<byte[]> ReadAsync(Block.Graph.BlockNode node, long offset, int length)
    {
        var bytes = new byte[length];
        await node.ReadAsync(offset, bytes);
        return bytes;
    }

    [Theory]
    [InlineData(MirrorCopyMode.WriteBlocking, true)]
    [InlineData(MirrorCopyMode.Background, false)]
    public async Task A_write_during_the_copy_lands_on_the_target_only_when_writes_block(MirrorCopyMode mode, bool onTarget)
    {
        var (rig, job) = await StartParkedAsync(mode);
        await using var _ = rig;
        var data = Pattern((int)Chunk, 3);

        // A clean chunk the loop has no reason to copy.
        await rig.Vm.WriteAsync(12 * Chunk, data);

        Assert.Equal(data, await ReadAsync(rig.SourceMemory, 12 * Chunk, data.Length));
        Assert.Equal(onTarget ? data : new byte[Chunk], await ReadAsync(rig.TargetMemory, 12 * Chunk, data.Length));
        Assert.Equal(onTarget ? 7 * Chunk : 8 * Chunk, job.DirtyBytes);
        Assert.Equal(mode, job.CopyMode);
        Assert.Equal(onTarget, job.WritesBlocking);
    }

    [Fact]
    public async Task Write_zeroes_go_to_the_target_too()
    {
        var (rig, job) = await StartParkedAsync(MirrorCopyMode.WriteBlocking);
        await using var _ = rig;

        // Chunk 4 is dirty data not yet copied; zeroing it whole makes both sides zero and the chunk clean.
        await rig.Vm.WriteZeroesAsync(4 * Chunk, Chunk);

        Assert.Equal(new byte[Chunk], await ReadAsync(rig.SourceMemory, 4 * Chunk, (int)Chunk));
        Assert.Equal(6 * Chunk, job.DirtyBytes);
    }

    [Fact]
    public async Task Unaligned_dirty_edges_stay_dirty_and_clean_edges_go_to_the_target()
    {
        var (rig, job) = await StartParkedAsync(MirrorCopyMode.WriteBlocking);
        await using var _ = rig;

        // [200 KiB, 400 KiB): its head chunk (192 KiB) and tail chunk (384 KiB) are dirty and only partly
        // written, so they are left to the loop; chunks 4 and 5 are covered whole and become clean.
        var data = Pattern(200 * 1024, 5);
        await rig.Vm.WriteAsync(200 * 1024, data);

        Assert.Equal(5 * Chunk, job.DirtyBytes);
        Assert.Equal(data.AsSpan(56 * 1024, 128 * 1024).ToArray(), await ReadAsync(rig.TargetMemory, 4 * Chunk, 2 * (int)Chunk));
        Assert.Equal(new byte[56 * 1024], await ReadAsync(rig.TargetMemory, 200 * 1024, 56 * 1024));
        Assert.Equal(new byte[16 * 1024], await ReadAsync(rig.TargetMemory, 6 * Chunk, 16 * 1024));

        // Inside a clean chunk (11: zeroes on both sides) an unaligned write goes as it is; the chunk stays clean.
        var small = Pattern(3000, 9);
        await rig.Vm.WriteAsync(11 * Chunk + 100, small);
        Assert.Equal(small, await ReadAsync(rig.TargetMemory, 11 * Chunk + 100, small.Length));
        Assert.Equal(5 * Chunk, job.DirtyBytes);

        // Once the loop runs, all of it is copied.
        job.SetSpeed(0);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task A_write_waits_for_a_copy_of_its_chunks_in_flight()
    {
        await using var rig = await MirrorRig.CreateAsync(gateTarget: true);
        rig.TargetGate.Close();
        var job = await rig.StartAsync(MirrorRig.Options() with { CopyMode = MirrorCopyMode.WriteBlocking });
        await rig.TargetGate.WaitArrivedAsync(1);

        // The loop's first copy, [0, 128 KiB) with the old data, is held at the target. A guest write into
        // it must not reach the target before that copy has landed, or the old data would land last.
        var data = Pattern(4096, 11);
        var write = rig.Vm.WriteAsync(4096, data).AsTask();
        for (var i = 0; i < 50; i++)
        {
            await Task.Yield();
            await Task.Delay(1);
        }

        Assert.False(write.IsCompleted);
        Assert.Equal(1, rig.TargetGate.Arrived);

        rig.TargetGate.Open();
        await write.WaitAsync(MirrorTestRunner.Limit);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        Assert.Equal(data, await ReadAsync(rig.TargetMemory, 4096, data.Length));
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Theory]
    [InlineData(MirrorCopyMode.WriteBlocking, MirrorEngine.WriteBlockingCopyWrites, MirrorJob.WriteBlockingMaxInFlight)]
    [InlineData(MirrorCopyMode.Background, 8, 8)]
    public async Task While_writes_block_only_two_copy_writes_are_at_the_target_at_once(MirrorCopyMode mode, int expected, int inFlight)
    {
        // Data in every other chunk: each is a run of its own, so the loop starts one copy per chunk.
        await using var rig = await MirrorRig.CreateAsync(size: 16 * Chunk, withData: false, gateTarget: true);
        for (var chunk = 0; chunk < 16; chunk += 2)
        {
            await rig.SourceMemory.WriteAsync(chunk * Chunk, Pattern((int)Chunk, (byte)chunk));
        }

        rig.TargetGate.Close();
        var job = await rig.StartAsync(MirrorRig.Options() with { BufSize = 16 * Chunk, CopyMode = mode });

        // The copies have started (read, then wait at the gate or for their turn to write): all eight in
        // background, four while writes block (two writing, two read ahead).
        await rig.TargetGate.WaitArrivedAsync(Math.Min(expected, 2));
        using (var deadline = new CancellationTokenSource(MirrorTestRunner.Limit))
        {
            while (job.Engine.InFlight < inFlight)
            {
                await Task.Delay(1, deadline.Token);
            }
        }

        for (var i = 0; i < 20; i++)
        {
            await Task.Delay(1);
        }

        Assert.Equal(expected, rig.TargetGate.Arrived);
        Assert.Equal(inFlight, job.Engine.InFlight);
        rig.TargetGate.Open();
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Theory]
    [InlineData(BlockdevOnError.Report, BlockErrno.EIO, BlockErrorAction.Report)]
    [InlineData(BlockdevOnError.Ignore, BlockErrno.EIO, BlockErrorAction.Ignore)]
    [InlineData(BlockdevOnError.Stop, BlockErrno.EIO, BlockErrorAction.Stop)]
    [InlineData(BlockdevOnError.Enospc, BlockErrno.ENOSPC, BlockErrorAction.Stop)]
    [InlineData(BlockdevOnError.Enospc, BlockErrno.EIO, BlockErrorAction.Report)]
    public async Task A_target_error_redirties_the_range_applies_the_policy_and_spares_the_guest(BlockdevOnError policy, BlockErrno errno, BlockErrorAction action)
    {
        var (rig, job) = await StartParkedAsync(MirrorCopyMode.WriteBlocking, policy);
        await using var _ = rig;
        var rule = rig.TargetDebug.AddRule(new BlkdebugRule(BlockOperation.Write, 12 * Chunk, Chunk, errno, Once: true));

        var data = Pattern((int)Chunk, 13);
        await rig.Vm.WriteAsync(12 * Chunk, data);

        Assert.Equal(data, await ReadAsync(rig.SourceMemory, 12 * Chunk, data.Length));
        Assert.Equal(8 * Chunk, job.DirtyBytes);
        Assert.False(job.ActivelySynced);
        var error = Assert.Single(rig.Log.Events.OfType<BlockJobErrorEvent>());
        Assert.Equal(action, error.Action);
        Assert.False(error.IsRead);
        Assert.Equal(action == BlockErrorAction.Stop, job.IsUserPaused);
        rig.TargetDebug.RemoveRule(rule);

        if (action == BlockErrorAction.Stop)
        {
            job.Resume();
        }

        job.SetSpeed(0);
        if (action == BlockErrorAction.Report)
        {
            await MirrorTestRunner.WaitFinishedAsync(job);
            Assert.NotNull(job.Error);
            return;
        }

        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task A_failed_source_write_fails_the_guest_and_leaves_the_range_dirty()
    {
        var (rig, job) = await StartParkedAsync(MirrorCopyMode.WriteBlocking);
        await using var _ = rig;
        var rule = rig.SourceDebug.AddRule(new BlkdebugRule(BlockOperation.Write, 12 * Chunk, Chunk, BlockErrno.EIO, Once: true));

        await Assert.ThrowsAsync<BlockIOException>(async () => await rig.Vm.WriteAsync(12 * Chunk, Pattern((int)Chunk, 17)));

        Assert.Equal(8 * Chunk, job.DirtyBytes);
        Assert.Empty(rig.Log.Events.OfType<BlockJobErrorEvent>());
        rig.SourceDebug.RemoveRule(rule);
        job.SetSpeed(0);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Theory]
    [InlineData(MirrorCopyMode.WriteBlocking, true)]
    [InlineData(MirrorCopyMode.Background, false)]
    public async Task A_guest_flush_reaches_the_target_only_when_writes_block_and_its_failure_spares_the_guest(MirrorCopyMode mode, bool reachesTarget)
    {
        var (rig, job) = await StartParkedAsync(mode, BlockdevOnError.Ignore);
        await using var _ = rig;
        rig.TargetDebug.AddRule(new BlkdebugRule(BlockOperation.Flush, Once: true));

        // A flush with nothing written since the last one stops at the filter's node: write first.
        await rig.Vm.WriteAsync(12 * Chunk, Pattern(4096, 37));
        await rig.Vm.FlushAsync();

        Assert.Equal(reachesTarget ? 1 : 0, rig.TargetDebug.InjectedCount);
        Assert.Equal(reachesTarget ? [BlockErrorAction.Ignore] : [], rig.Log.Events.OfType<BlockJobErrorEvent>().Select(e => e.Action));
        Assert.Null(job.Error);
    }

    [Fact]
    public async Task A_paused_job_still_copies_guest_writes()
    {
        var (rig, job) = await StartParkedAsync(MirrorCopyMode.WriteBlocking);
        await using var _ = rig;
        job.Pause();
        await MirrorTestRunner.WaitParkedAsync(job, JobStatus.Paused);

        var data = Pattern((int)Chunk, 19);
        await rig.Vm.WriteAsync(13 * Chunk, data);

        Assert.Equal(data, await ReadAsync(rig.TargetMemory, 13 * Chunk, data.Length));
        Assert.Equal(7 * Chunk, job.DirtyBytes);
    }

    [Fact]
    public async Task The_mode_switches_both_ways()
    {
        var (rig, job) = await StartParkedAsync(MirrorCopyMode.Background);
        await using var _ = rig;

        job.ChangeCopyMode(MirrorCopyMode.WriteBlocking);
        Assert.Equal(MirrorCopyMode.WriteBlocking, job.CopyMode);
        var first = Pattern((int)Chunk, 23);
        await rig.Vm.WriteAsync(12 * Chunk, first);
        Assert.Equal(first, await ReadAsync(rig.TargetMemory, 12 * Chunk, first.Length));

        job.ChangeCopyMode(MirrorCopyMode.Background);
        Assert.False(job.WritesBlocking);
        await rig.Vm.WriteAsync(13 * Chunk, Pattern((int)Chunk, 29));
        Assert.Equal(new byte[Chunk], await ReadAsync(rig.TargetMemory, 13 * Chunk, (int)Chunk));
        Assert.Equal(8 * Chunk, job.DirtyBytes);

        // Asking for the mode the job has changes nothing; the adaptive mode starts out not blocking.
        job.ChangeCopyMode(MirrorCopyMode.Background);
        job.ChangeCopyMode(MirrorCopyMode.Adaptive);
        Assert.Equal(MirrorCopyMode.Adaptive, job.CopyMode);
        Assert.False(job.WritesBlocking);
    }

    [Fact]
    public async Task Actively_synced_holds_once_ready_with_nothing_dirty_and_ends_with_background_mode()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(MirrorRig.Options() with { CopyMode = MirrorCopyMode.WriteBlocking });
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        using (var cts = new CancellationTokenSource(MirrorTestRunner.Limit))
        {
            while (!job.ActivelySynced)
            {
                Assert.False(cts.IsCancellationRequested, MirrorTestRunner.Describe(job));
                await Task.Delay(1, CancellationToken.None);
            }
        }

        // Writes keep it: they reach the target as they happen.
        await rig.Vm.WriteAsync(3 * Chunk + 512, Pattern(8192, 31));
        Assert.True(job.ActivelySynced);
        await rig.AssertTargetEqualsSourceAsync();

        job.ChangeCopyMode(MirrorCopyMode.Background);
        Assert.False(job.ActivelySynced);
        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
    }

    [Fact]
    public async Task A_finished_job_refuses_a_change_of_mode()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(MirrorRig.Options() with { AutoDismiss = false });
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);

        var refused = Assert.Throws<JobException>(() => job.ChangeCopyMode(MirrorCopyMode.WriteBlocking));
        Assert.Equal("Job 'mirror0' in state 'concluded' cannot accept command verb 'change'", refused.Message);
        Assert.Equal(MirrorCopyMode.Background, job.CopyMode);
    }
}
