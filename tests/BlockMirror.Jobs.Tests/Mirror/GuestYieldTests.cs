using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// The background copy yields the disk to the guest: while guest writes reach the source, it keeps at most
/// <see cref="MirrorJob.GuestWritingMaxBytesInFlight"/> in flight instead of buf-size, and takes buf-size
/// back a slice after the last guest write.
/// </summary>
public sealed class GuestYieldTests
{
    const long Chunk = MirrorRig.Chunk;

    // Runs of data one operation long (1 MiB), a clean chunk between them: one operation per run.
    const int RunChunks = (int)(MirrorJob.MaxIoBytes / Chunk);
    const int Runs = 40;
    const int Full = MirrorJob.MaxInFlight;
    const int Yielding = (int)(MirrorJob.GuestWritingMaxBytesInFlight / MirrorJob.MaxIoBytes);

    [Theory]
    [InlineData(false, Full)]
    [InlineData(true, Yielding)]
    public async Task A_guest_write_lowers_the_copies_in_flight_until_a_slice_passes(bool guestWrites, int refill)
    {
        // The clock moves only when the test moves it.
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(size: Runs * (RunChunks + 1) * Chunk, withData: false, gateTarget: true, time: time);
        for (var run = 0; run < Runs; run++)
        {
            var data = new byte[RunChunks * Chunk];
            data.AsSpan().Fill((byte)(run + 1));
            await rig.SourceMemory.WriteAsync(run * (RunChunks + 1) * Chunk, data);
        }

        rig.TargetGate.Close();
        var job = await rig.StartAsync(MirrorRig.Options() with { BufSize = MirrorJob.MaxInFlight * MirrorJob.MaxIoBytes });

        // The first sixteen copies (16 MiB) wait at the gate, before any guest write.
        await rig.TargetGate.WaitArrivedAsync(MirrorJob.MaxInFlight);
        await SettleAsync();
        Assert.Equal(MirrorJob.MaxInFlight, rig.TargetGate.Arrived);

        if (guestWrites)
        {
            // A clean chunk between two runs: the guest's write goes to the source only (background mode).
            await rig.Vm.WriteAsync(RunChunks * Chunk, new byte[4096]);
        }

        // Let the sixteen land, and hold whatever the loop issues next.
        rig.TargetGate.Open();
        rig.TargetGate.Close();
        await rig.TargetGate.WaitArrivedAsync(MirrorJob.MaxInFlight + refill);
        await WaitInFlightAsync(job, refill);
        await SettleAsync();
        Assert.Equal(MirrorJob.MaxInFlight + refill, rig.TargetGate.Arrived);
        Assert.Equal(refill, job.Engine.InFlight);

        if (guestWrites)
        {
            // A slice after the last guest write the copy takes buf-size again.
            time.Advance(TimeSpan.FromMilliseconds(100));
            rig.TargetGate.Open();
            rig.TargetGate.Close();
            await rig.TargetGate.WaitArrivedAsync(MirrorJob.MaxInFlight + refill + MirrorJob.MaxInFlight);
            await WaitInFlightAsync(job, MirrorJob.MaxInFlight);
            await SettleAsync();
            Assert.Equal(MirrorJob.MaxInFlight, job.Engine.InFlight);
        }

        rig.TargetGate.Open();
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task In_READY_the_copy_keeps_up_with_the_guest_at_full_depth()
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(size: Runs * (RunChunks + 1) * Chunk, withData: false, gateTarget: true, time: time);
        var job = await rig.StartAsync(MirrorRig.Options() with { BufSize = MirrorJob.MaxInFlight * MirrorJob.MaxIoBytes });
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);

        // The loop, in sync, sleeps a slice. The guest writes within it, and the loop wakes to copy what
        // it dirtied while the writes are still recent: before READY that would be 2 MiB at a time.
        rig.TargetGate.Close();
        time.Advance(TimeSpan.FromMilliseconds(60));
        for (var run = 0; run < Runs; run++)
        {
            var data = new byte[RunChunks * Chunk];
            data.AsSpan().Fill((byte)(run + 1));
            await rig.Vm.WriteAsync(run * (RunChunks + 1) * Chunk, data);
        }

        time.Advance(TimeSpan.FromMilliseconds(40));
        await rig.TargetGate.WaitArrivedAsync(Full);
        await WaitInFlightAsync(job, Full);
        await SettleAsync();
        Assert.Equal(Full, job.Engine.InFlight);

        rig.TargetGate.Open();
        time.Advance(TimeSpan.FromMilliseconds(100));
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    static async Task WaitInFlightAsync(MirrorJob job, int count)
    {
        using var deadline = new CancellationTokenSource(MirrorTestRunner.Limit);
        while (job.Engine.InFlight != count)
        {
            await Task.Delay(1, deadline.Token);
        }
    }

    /// <summary>Gives the loop time to issue more than it may, were it to.</summary>
    static async Task SettleAsync()
    {
        for (var i = 0; i < 20; i++)
        {
            await Task.Delay(1);
        }
    }
}
