using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Tests.Mirror;

namespace BlockMirror.Jobs.Tests.Policies;

/// <summary>
/// A soft cancel of a READY mirror must still copy what the source has new; when the target keeps failing
/// (a destination that is gone), an error policy that tries again (<c>ignore</c>) or waits (<c>stop</c>) would
/// keep the job alive for ever. Once a cancel is asked for, an error is reported and ends the job (QEMU 7.2
/// loops here: a deliberate difference, see MirrorNbdReconnectDifferentialTests).
/// </summary>
public sealed class CancelOverridesPolicyTests
{
    [Theory]
    [InlineData(BlockdevOnError.Ignore)]
    [InlineData(BlockdevOnError.Stop)]
    public async Task A_soft_cancelled_ready_mirror_whose_target_keeps_failing_ends_with_the_error(BlockdevOnError policy)
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(MirrorRig.Options() with { OnTargetError = policy });
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        rig.TargetDebug.AddRule(new BlkdebugRule(BlockOperation.Write, 0, MirrorRig.DefaultSize, BlockErrno.EIO));
        await rig.Vm.WriteAsync(0, Enumerable.Repeat((byte)0x42, (int)MirrorRig.Chunk).ToArray());

        await job.CancelAsync(force: false);
        await MirrorTestRunner.WaitFinishedAsync(job);

        var errors = rig.Log.Events.OfType<BlockJobErrorEvent>().ToList();
        Assert.Equal(BlockErrorAction.Report, errors[^1].Action);
        Assert.All(errors[..^1], e => Assert.Equal(policy == BlockdevOnError.Ignore ? BlockErrorAction.Ignore : BlockErrorAction.Stop, e.Action));
        Assert.NotNull(Assert.Single(rig.Log.Events.OfType<BlockJobCompletedEvent>()).Error);
        rig.AssertJobLeftNothing(usersOn: rig.Source);
    }
}
