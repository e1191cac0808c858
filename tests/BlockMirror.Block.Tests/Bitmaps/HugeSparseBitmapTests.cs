using BlockMirror.Block.Bitmaps;

namespace BlockMirror.Block.Tests.Bitmaps;

/// <summary>
/// The bitmap of a huge, mostly clean disk: 64 Mi bits, a 4 TiB disk at 64 KiB chunks (8 MiB). A scan must
/// find the few set bits in a handful of word reads each (the summary levels skip the clean words), and a run
/// search must stop at its limit; both are counted in words read, not timed. The model is the set of bits
/// itself: a bool per bit would be 64 MiB.
/// </summary>
public sealed class HugeSparseBitmapTests
{
    const long Bits = 1L << 26;

    [Fact]
    public void Next_set_finds_every_set_bit_of_a_huge_sparse_bitmap_reading_a_few_words_per_call()
    {
        var bitmap = new HBitmap(Bits);
        var model = new SortedSet<long>();
        // Five runs spread over the disk (the bench's five extents), runs that cross word and summary-word
        // boundaries, and the very first and last bits.
        foreach (var (first, count) in new[] { (0L, 1L), (12_345_678L, 1024L), (Bits / 5 * 2 - 7, 70L), (Bits / 2 + 4095, 2L), (Bits - 262_145, 300L), (Bits - 1, 1L) })
        {
            bitmap.Set(first, count);
            for (var bit = first; bit < first + count; bit++)
            {
                model.Add(bit);
            }
        }

        Assert.Equal(model.Count, bitmap.Count);
        var found = new List<long>();
        var worst = 0L;
        for (var bit = bitmap.NextSet(0); bit >= 0; bit = bitmap.NextSet(bit + 1))
        {
            found.Add(bit);
            var before = bitmap.WordsRead;
            _ = bitmap.NextSet(bit + 1);
            worst = Math.Max(worst, bitmap.WordsRead - before);
        }

        Assert.Equal(model, found);
        // Climbing and descending the levels: two words a level at most. A bit-by-bit or word-by-word scan
        // from one run to the next would read up to a million words.
        Assert.Equal(5, bitmap.Depth);
        Assert.InRange(worst, 1, 2 * bitmap.Depth);
    }

    [Fact]
    public void Next_set_on_a_clean_huge_bitmap_answers_none_from_the_top_level()
    {
        var bitmap = new HBitmap(Bits);
        var before = bitmap.WordsRead;

        Assert.Equal(-1, bitmap.NextSet(0));
        Assert.Equal(-1, bitmap.NextSet(Bits / 3));
        Assert.InRange(bitmap.WordsRead - before, 2, 2 * bitmap.Depth);
    }

    [Fact]
    public void Clearing_a_set_huge_bitmap_piecewise_keeps_the_scan_right_and_short()
    {
        // Everything dirty (a target that does not read as zeroes), then cleared run by run from the start, as
        // the copy loop does: the next set bit is always right after the cleared part, one summary climb away.
        var bitmap = new HBitmap(Bits);
        bitmap.SetAll();
        Assert.Equal(Bits, bitmap.Count);
        const long Run = 256; // a 16 MiB buffer of 64 KiB chunks
        for (long first = 0; first < Bits; first += Bits / 64)
        {
            bitmap.Reset(first, Run);
            var before = bitmap.WordsRead;
            Assert.Equal(first + Run, bitmap.NextSet(first));
            Assert.InRange(bitmap.WordsRead - before, 1, 2 * bitmap.Depth);
        }

        Assert.Equal(Bits - (64 * Run), bitmap.Count);
        bitmap.Reset(0, Bits);
        Assert.Equal(0, bitmap.Count);
        Assert.Equal(-1, bitmap.NextSet(0));
    }

    [Fact]
    public void Next_clear_in_a_huge_set_bitmap_reads_only_up_to_its_limit()
    {
        var bitmap = new HBitmap(Bits);
        bitmap.SetAll();
        bitmap.Reset(Bits - 10, 1);
        var before = bitmap.WordsRead;

        Assert.Equal(1_000_256, bitmap.NextClear(1_000_000, 1_000_256));
        Assert.InRange(bitmap.WordsRead - before, 4, 5);
        Assert.Equal(Bits - 10, bitmap.NextClear(Bits - 64 * 3));
    }

    [Fact]
    public void A_dirty_run_ends_at_the_first_clean_chunk_or_at_its_limit_on_a_4_TiB_bitmap()
    {
        const long Chunk = 64 * 1024;
        var dirty = new DirtyBitmap(Chunk, 4L << 40);
        dirty.SetAll();
        dirty.ResetDirty(1L << 40, Chunk);

        // The run from the start is limited by the limit, however much is dirty beyond it.
        Assert.Equal(16L << 20, dirty.DirtyRunEnd(0, 16L << 20));
        // It stops at the clean chunk, and a clean chunk ends its own run at once.
        Assert.Equal(1L << 40, dirty.DirtyRunEnd((1L << 40) - (4 * Chunk), 2L << 40));
        Assert.Equal((1L << 40) + 5, dirty.DirtyRunEnd((1L << 40) + 5, 2L << 40));
        // A limit past the device end stops there.
        Assert.Equal(4L << 40, dirty.DirtyRunEnd((4L << 40) - Chunk, 5L << 40));
        Assert.Equal(4L << 40, dirty.DirtyRunEnd(5L << 40, 6L << 40));
    }

    [Fact]
    public void A_dirty_run_follows_the_chunk_model_on_a_small_bitmap()
    {
        const long Chunk = 4096;
        const long Length = (100 * Chunk) + 123;
        var random = new Random(20);
        var dirty = new DirtyBitmap(Chunk, Length);
        var model = new bool[101];
        for (var i = 0; i < 60; i++)
        {
            var chunk = random.Next(101);
            dirty.SetDirty(chunk * Chunk, 1);
            model[chunk] = true;
        }

        for (var trial = 0; trial < 500; trial++)
        {
            var offset = random.NextInt64(Length + Chunk);
            var limit = offset + random.NextInt64(30 * Chunk);
            var end = Math.Min(limit, Length);
            long expected;
            if (offset >= end)
            {
                expected = end;
            }
            else if (!model[offset / Chunk])
            {
                expected = offset;
            }
            else
            {
                var chunk = (offset / Chunk) + 1;
                while (chunk * Chunk < end && model[chunk])
                {
                    chunk++;
                }

                expected = Math.Min(end, chunk * Chunk);
            }

            Assert.True(expected == dirty.DirtyRunEnd(offset, limit), $"DirtyRunEnd({offset}, {limit}): expected {expected}, got {dirty.DirtyRunEnd(offset, limit)}");
        }
    }
}
