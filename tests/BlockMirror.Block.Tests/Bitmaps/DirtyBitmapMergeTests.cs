using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Tests.Bitmaps;

/// <summary>What QMP's merge, clear and transactions build on: merging across granularities, snapshots and restores, QEMU's count.</summary>
public sealed class DirtyBitmapMergeTests
{
    const long KiB = 1024;

    static ByteRange[] Areas(DirtyBitmap bitmap) => [.. bitmap.EnumerateDirtyAreas()];

    [Fact]
    public void A_merge_marks_every_byte_the_source_marks_at_the_targets_granularity()
    {
        var fine = new DirtyBitmap(4 * KiB, 1024 * KiB);
        fine.SetDirty(60 * KiB, 8 * KiB);
        fine.SetDirty(500 * KiB, 1);
        var coarse = new DirtyBitmap(64 * KiB, 1024 * KiB);
        coarse.SetDirty(900 * KiB, 1);

        coarse.Merge(fine);
        Assert.Equal([new(0, 128 * KiB), new(448 * KiB, 64 * KiB), new(896 * KiB, 64 * KiB)], Areas(coarse));

        // And back: a coarse chunk marks every fine chunk it covers.
        var back = new DirtyBitmap(4 * KiB, 1024 * KiB);
        back.Merge(coarse);
        Assert.Equal(Areas(coarse), Areas(back));
        Assert.Equal([new(60 * KiB, 8 * KiB), new(500 * KiB, 4 * KiB)], Areas(fine));
    }

    [Fact]
    public void A_snapshot_is_independent_and_a_restore_drops_what_was_set_since()
    {
        var bitmap = new DirtyBitmap(64 * KiB, 1024 * KiB);
        bitmap.SetDirty(0, 1);
        var snapshot = bitmap.Snapshot();
        bitmap.Clear();
        bitmap.SetDirty(512 * KiB, 1);
        Assert.Equal([new(0, 64 * KiB)], Areas(snapshot));

        bitmap.Restore(snapshot);
        Assert.Equal([new(0, 64 * KiB)], Areas(bitmap));
    }

    [Fact]
    public void The_count_takes_a_dirty_last_chunk_whole_as_qemus_does()
    {
        var bitmap = new DirtyBitmap(64 * KiB, 100 * KiB);
        bitmap.SetDirty(90 * KiB, 1);
        Assert.Equal(64 * KiB, bitmap.DirtyChunkBytes);
        Assert.Equal(36 * KiB, bitmap.DirtyBytes);
    }

    [Fact]
    public void Bitmaps_up_to_qemus_2_GiB_granularity_are_made_and_the_default_follows_the_cluster_size()
    {
        var huge = new DirtyBitmap(DirtyBitmap.MaxBitmapGranularity, 5L << 30);
        huge.SetDirty(3L << 30, 1);
        Assert.Equal([new(2L << 30, 2L << 30)], Areas(huge));
        Assert.NotNull(DirtyBitmap.ValidateGranularity(DirtyBitmap.MaxBitmapGranularity));
        Assert.Equal([65536L, 4096L, 4096L, 32768L, 65536L], new long[] { 0, 512, 4096, 32768, 2 << 20 }.Select(DirtyBitmap.DefaultGranularity));
    }
}
