using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// sync=bitmap (Proxmox's incremental re-sync): onto a target in sync with the source when a bitmap started,
/// the job copies what the bitmap marks and nothing else, and leaves the bitmap as bitmap-mode says.
/// </summary>
public sealed class MirrorSyncBitmapTests
{
    const long Chunk = MirrorRig.Chunk;

    /// <summary>A rig whose target already holds the source's bytes, with bitmap b0 on the source recording two writes (three chunks).</summary>
    static async Task<MirrorRig> InSyncThenChangedAsync(bool gateTarget = false)
    {
        var rig = await MirrorRig.CreateAsync(gateTarget: gateTarget);
        await rig.TargetMemory.WriteAsync(0, rig.Content);
        rig.Source.CreateDirtyBitmap(Chunk, "b0");
        await rig.Vm.WriteAsync(3 * Chunk, Filled(Chunk, 0x5a));
        await rig.Vm.WriteAsync(10 * Chunk + 4096, Filled(Chunk, 0x6b));
        return rig;
    }

    static byte[] Filled(long length, byte value)
    {
        var bytes = new byte[length];
        Array.Fill(bytes, value);
        return bytes;
    }

    static MirrorOptions BitmapOptions(BitmapSyncMode? mode) =>
        new() { JobId = "mirror0", Sync = MirrorSyncMode.Bitmap, Bitmap = "b0", BitmapMode = mode, BufSize = 2 * Chunk };

    [Fact]
    public async Task Only_the_chunks_the_bitmap_marks_are_copied_and_on_success_clears_it()
    {
        await using var rig = await InSyncThenChangedAsync();
        var bitmap = rig.Source.DirtyBitmaps.Single(b => b.Name == "b0");
        Assert.Equal(3 * Chunk, bitmap.DirtyBytes);

        var job = await rig.StartAsync(BitmapOptions(BitmapSyncMode.OnSuccess));
        Assert.True(bitmap.Busy);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);

        // Three chunks, not the disk: the rest was in sync by the user's word.
        Assert.Equal(3 * Chunk, job.GetInfo().Offset);
        await rig.AssertTargetEqualsSourceAsync();
        Assert.Equal(0, bitmap.DirtyBytes);
        Assert.False(bitmap.Busy);
    }

    [Fact]
    public async Task Never_leaves_the_bitmap_with_its_bits()
    {
        await using var rig = await InSyncThenChangedAsync();
        var bitmap = rig.Source.DirtyBitmaps.Single(b => b.Name == "b0");
        var job = await rig.StartAsync(BitmapOptions(BitmapSyncMode.Never));
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
        Assert.Equal(3 * Chunk, bitmap.DirtyBytes);
        Assert.False(bitmap.Busy);
    }

    [Fact]
    public async Task Always_gives_a_cancelled_job_s_leftovers_back_to_the_bitmap()
    {
        await using var rig = await InSyncThenChangedAsync();
        var bitmap = rig.Source.DirtyBitmaps.Single(b => b.Name == "b0");
        rig.TargetDebug.AddRule(new BlkdebugRule(BlockOperation.Write, 0, rig.Source.Length, BlockErrno.EIO));
        var job = await rig.StartAsync(BitmapOptions(BitmapSyncMode.Always));
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.NotNull(job.Error);

        // Nothing reached the target: the bitmap still marks all three chunks, so the re-sync can run again.
        Assert.Equal(3 * Chunk, bitmap.DirtyBytes);
        Assert.False(bitmap.Busy);
    }

    [Fact]
    public async Task Always_gives_back_the_copies_a_forced_cancel_aborted()
    {
        await using var rig = await InSyncThenChangedAsync(gateTarget: true);
        var bitmap = rig.Source.DirtyBitmaps.Single(b => b.Name == "b0");
        rig.TargetGate.Close();
        var job = await rig.StartAsync(BitmapOptions(BitmapSyncMode.Always));

        // The first copy is held at the target when the cancel aborts it (the buffer has room for no other).
        await rig.TargetGate.WaitArrivedAsync(1);
        await job.CancelAsync(force: true);
        await MirrorTestRunner.WaitFinishedAsync(job);
        rig.TargetGate.Open();

        // No copy reached the target, so the re-sync must find all three chunks still marked.
        Assert.Equal(3 * Chunk, bitmap.DirtyBytes);
        Assert.False(bitmap.Busy);
    }

    public static TheoryData<string, MirrorOptions> Refusals => new()
    {
        { "Granularity and bitmap cannot both be set", BitmapOptions(BitmapSyncMode.Never) with { Granularity = 4096 } },
        { "bitmap-mode must be specified if a bitmap is provided", BitmapOptions(null) },
        { "Dirty bitmap 'nope' not found", BitmapOptions(BitmapSyncMode.Never) with { Bitmap = "nope" } },
        { "Cannot specify bitmap sync mode without a bitmap", new MirrorOptions { JobId = "mirror0", BitmapMode = BitmapSyncMode.Never } },
        { "Must provide a valid bitmap name for 'bitmap' sync mode", new MirrorOptions { JobId = "mirror0", Sync = MirrorSyncMode.Bitmap } },
        { "sync mode 'full' is not compatible with bitmaps", BitmapOptions(BitmapSyncMode.Never) with { Sync = MirrorSyncMode.Full } },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public async Task A_refused_bitmap_request_says_why_and_changes_nothing(string expected, MirrorOptions options)
    {
        await using var rig = await InSyncThenChangedAsync();
        var ex = await Assert.ThrowsAsync<JobException>(() => rig.StartAsync(options));
        Assert.Equal(expected, ex.Message);
        Assert.DoesNotContain(rig.Graph.Nodes, n => n.Driver.DriverName == "mirror_top");
        Assert.False(rig.Source.DirtyBitmaps.Single(b => b.Name == "b0").Busy);
    }

    [Fact]
    public async Task A_busy_bitmap_is_refused()
    {
        await using var rig = await InSyncThenChangedAsync();
        var bitmap = rig.Source.DirtyBitmaps.Single(b => b.Name == "b0");
        bitmap.Busy = true;
        var ex = await Assert.ThrowsAsync<JobException>(() => rig.StartAsync(BitmapOptions(BitmapSyncMode.Never)));
        Assert.Equal("Bitmap 'b0' is currently in use by another operation and cannot be used", ex.Message);
        Assert.True(bitmap.Busy);
    }
}
