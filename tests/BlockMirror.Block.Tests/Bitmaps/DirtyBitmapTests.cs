using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Tests.Bitmaps;

/// <summary>DirtyBitmap's byte-level contract, by worked examples.</summary>
public sealed class DirtyBitmapTests
{
    const long KiB = 1024;

    [Fact]
    public void Nothing_past_the_device_end_is_dirty_even_in_a_dirty_partial_last_chunk()
    {
        // Found by the model test: the last chunk covers [8192, 12288) but the device ends at 10000. Areas
        // and dirty bytes must stop at 10000; before the fix, the area search from 10000 returned an empty
        // area at 10000 and EnumerateDirtyAreas never ended.
        var bitmap = new DirtyBitmap(4 * KiB, 10_000);
        bitmap.SetDirty(9000, 10);

        Assert.Equal(9999, bitmap.NextDirty(9999));
        Assert.Equal(-1, bitmap.NextDirty(10_000));
        Assert.Equal(-1, bitmap.NextDirty(10_001));
        Assert.False(bitmap.TryGetNextDirtyArea(10_000, long.MaxValue, out _));
        Assert.Equal([new ByteRange(8 * KiB, 10_000 - (8 * KiB))], bitmap.EnumerateDirtyAreas().Take(3));
    }
}
