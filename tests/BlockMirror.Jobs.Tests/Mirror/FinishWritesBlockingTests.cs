using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// Once a READY job is to finish (complete, or a soft cancel), guest writes go to the target too until the end,
/// whatever the copy mode, so that what is dirty stops growing under a busy guest and the switch comes soon.
/// A forced cancel does not: the target is being given up.
/// </summary>
public sealed class FinishWritesBlockingTests
{
    const long Chunk = MirrorRig.Chunk;

    // The rig's source (1 MiB) holds data in its first 704 KiB; chunks 11 to 15 are clean on both sides.
    const long Clean = 12 * Chunk;

    static byte[] Pattern(byte seed)
    {
        var bytes = new byte[Chunk];
        for (var i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(seed + i * 13);
        }

        return bytes;
    }

    static async Task<(MirrorRig Rig, MirrorJob Job)> ReadyWithCopyHeldAsync(MirrorCopyMode mode)
    {
        var rig = await MirrorRig.CreateAsync(gateTarget: true);
        var job = await rig.StartAsync(MirrorRig.Options() with { CopyMode = mode });
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        Assert.False(job.WritesBlocking);

        // A write of the guest that only the loop brings to the target; its copy waits at the gate.
        rig.TargetGate.Close();
        var arrived = rig.TargetGate.Arrived;
        await rig.Vm.WriteAsync(Clean, Pattern(1));
        await rig.TargetGate.WaitArrivedAsync(arrived + 1);
        return (rig, job);
    }

    [Theory]
    [InlineData(MirrorCopyMode.Background, false)]
    [InlineData(MirrorCopyMode.Adaptive, false)]
    [InlineData(MirrorCopyMode.Background, true)]
    public async Task After_complete_or_a_soft_cancel_guest_writes_wait_for_the_target(MirrorCopyMode mode, bool softCancel)
    {
        var (rig, job) = await ReadyWithCopyHeldAsync(mode);
        await using var _ = rig;

        var finishing = softCancel ? job.CancelAsync(force: false) : Task.Run(job.Complete);
        await finishing;
        Assert.True(job.WritesBlocking);
        Assert.Equal(mode, job.CopyMode);

        // The next guest write goes to the target as well, so it waits at the gate with the copy.
        var data = Pattern(2);
        var write = rig.Vm.WriteAsync(Clean + 2 * Chunk, data).AsTask();
        for (var i = 0; i < 20 && !write.IsCompleted; i++)
        {
            await Task.Delay(1);
        }

        Assert.False(write.IsCompleted, "a guest write after complete did not wait for the target");

        rig.TargetGate.Open();
        await write;
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task A_change_of_mode_after_complete_is_obeyed_and_adaptive_keeps_the_writes_blocking()
    {
        var (rig, job) = await ReadyWithCopyHeldAsync(MirrorCopyMode.Adaptive);
        await using var _ = rig;
        job.Complete();
        Assert.True(job.WritesBlocking);

        job.ChangeCopyMode(MirrorCopyMode.Background);
        Assert.False(job.WritesBlocking);
        job.ChangeCopyMode(MirrorCopyMode.Adaptive);
        Assert.True(job.WritesBlocking);

        rig.TargetGate.Open();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task A_forced_cancel_leaves_guest_writes_on_the_source_only()
    {
        var (rig, job) = await ReadyWithCopyHeldAsync(MirrorCopyMode.Background);
        await using var _ = rig;

        var cancel = job.CancelAsync(force: true);
        Assert.False(job.WritesBlocking);
        rig.TargetGate.Open();
        await cancel;
        await MirrorTestRunner.WaitFinishedAsync(job);
    }
}
