using BlockMirror.Block.Bitmaps;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Bitmaps;

/// <summary>
/// HBitmap against <see cref="BitModel"/>: random operation sequences replayed on both, compared after
/// every step (after QEMU's tests/unit/test-hbitmap.c), plus targeted edge cases.
/// </summary>
public sealed class HBitmapModelTests
{
    // A word holds 64 bits, a level-1 summary word covers 4096 bits, a level-2 word 262144.
    const long Word = 64;
    const long Summary1 = Word * Word;
    const long Summary2 = Summary1 * Word;

    static readonly long[] Units = [Word, Summary1, Summary2];

    // Sizes on both sides of every level change: 1 level up to 64 bits, 2 up to 4096, 3 up to 262144, then 4.
    static readonly long[] InterestingSizes = [0, 1, 63, 64, 65, 4095, 4096, 4097, 262143, 262144, 262145];

    const int StepsPerSequence = 40;

    [Theory]
    [InlineData(1)]
    [InlineData(63)]
    [InlineData(64)]
    [InlineData(65)]
    [InlineData(4096)]
    [InlineData(4097)]
    [InlineData(262145)]
    public void Random_operation_sequences_match_the_bool_model(long size) =>
        Seeds.Run(Seeds.Range(300), seed => RunSequence(new Random(unchecked((seed * 1_000_003) + (int)size)), size));

    static void RunSequence(Random random, long size)
    {
        var bitmap = new HBitmap(size);
        var model = new BitModel(size);
        var trace = new List<string>();
        Compare(bitmap, model, random, trace);
        for (var step = 0; step < StepsPerSequence; step++)
        {
            var choice = random.Next(100);
            if (choice < 40)
            {
                var (first, count) = RandomRange(random, model.Size);
                trace.Add($"Set({first}, {count})");
                bitmap.Set(first, count);
                model.Set(first, count);
            }
            else if (choice < 76)
            {
                var (first, count) = RandomRange(random, model.Size);
                trace.Add($"Reset({first}, {count})");
                bitmap.Reset(first, count);
                model.Reset(first, count);
            }
            else if (choice < 80)
            {
                trace.Add("SetAll()");
                bitmap.SetAll();
                model.SetAll();
            }
            else if (choice < 84)
            {
                trace.Add("ResetAll()");
                bitmap.ResetAll();
                model.ResetAll();
            }
            else
            {
                // Grow and shrink across the level changes near the starting size, or anywhere up to double.
                // Small sequences stay small, so the scans of the model stay cheap.
                var nearby = Array.FindAll(InterestingSizes, s => s <= (4 * size) + 64);
                var newSize = random.Next(3) == 0
                    ? random.NextInt64(0, (model.Size * 2) + 2)
                    : Math.Max(0, nearby[random.Next(nearby.Length)] + random.Next(-2, 3));
                trace.Add($"Resize({newSize})");
                bitmap.Resize(newSize);
                model.Resize(newSize);
            }

            Compare(bitmap, model, random, trace);
        }
    }

    /// <summary>A range that often starts or ends at a word or summary boundary, sometimes outside the bitmap.</summary>
    static (long First, long Count) RandomRange(Random random, long size)
    {
        long first;
        switch (random.Next(4))
        {
            case 0:
                first = random.NextInt64(0, Math.Max(1, size));
                break;
            case 1:
            case 2:
                var unit = Units[random.Next(Units.Length)];
                first = (random.NextInt64(0, (size / unit) + 2) * unit) + random.Next(-3, 4);
                break;
            default:
                // Partly or wholly outside: HBitmap clamps.
                first = random.Next(2) == 0 ? -random.Next(1, 100) : size - random.Next(-5, 5);
                break;
        }

        long count = random.Next(5) switch
        {
            0 => random.Next(1, 4),
            1 => Word + random.Next(-3, 4),
            2 => Summary1 + random.Next(-3, 4),
            3 => random.NextInt64(0, 5000),
            _ => random.NextInt64(0, size + 10),
        };
        return (first, count);
    }

    static void Compare(HBitmap bitmap, BitModel model, Random random, List<string> trace)
    {
        var size = model.Size;
        Check(size, bitmap.Size, "Size", trace);
        Check(model.Count, bitmap.Count, "Count", trace);

        List<long> probes = [0, 1, size - 1, size, size + 1, -1, 63, 64, 4095, 4096, 262143, 262144];
        for (var i = 0; i < 6; i++)
        {
            probes.Add(random.NextInt64(0, Math.Max(1, size)));
        }

        // Just past a set bit and just past a clear bit: the starts an iteration actually uses.
        var set = model.NextSet(random.NextInt64(0, Math.Max(1, size)));
        if (set >= 0)
        {
            probes.Add(set + 1);
            probes.Add(model.NextClear(set, long.MaxValue) + 1);
        }

        foreach (var probe in probes)
        {
            Check(model.Get(probe), bitmap.Get(probe), $"Get({probe})", trace);
            Check(model.NextSet(probe), bitmap.NextSet(probe), $"NextSet({probe})", trace);
            Check(model.NextClear(probe, long.MaxValue), bitmap.NextClear(probe), $"NextClear({probe})", trace);
            var limit = probe + random.Next(0, 300);
            Check(model.NextClear(probe, limit), bitmap.NextClear(probe, limit), $"NextClear({probe}, {limit})", trace);
        }
    }

    static void Check<T>(T expected, T actual, string what, List<string> trace)
    {
        if (!EqualityComparer<T>.Default.Equals(expected, actual))
        {
            Assert.Fail($"{what}: expected {expected}, got {actual}; operations: {string.Join(", ", trace)}");
        }
    }

    [Theory]
    [InlineData(0, 1)]
    [InlineData(1, 1)]
    [InlineData(64, 1)]
    [InlineData(65, 2)]
    [InlineData(4096, 2)]
    [InlineData(4097, 3)]
    [InlineData(262144, 3)]
    [InlineData(262145, 4)]
    public void Levels_are_added_until_one_word_covers_everything(long size, int depth)
    {
        Assert.Equal(depth, new HBitmap(size).Depth);
        var resized = new HBitmap(1);
        resized.Resize(size);
        Assert.Equal(depth, resized.Depth);
    }

    [Fact]
    public void An_empty_bitmap_has_nothing_to_find()
    {
        var bitmap = new HBitmap(0);
        bitmap.Set(0, 10);
        bitmap.SetAll();
        Assert.Equal(0, bitmap.Count);
        Assert.False(bitmap.Get(0));
        Assert.Equal(-1, bitmap.NextSet(0));
        Assert.Equal(0, bitmap.NextClear(0));
    }

    [Fact]
    public void A_negative_size_is_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new HBitmap(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new HBitmap(1).Resize(-1));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(63)]
    [InlineData(64)]
    [InlineData(127)]
    [InlineData(4095)]
    [InlineData(4096)]
    [InlineData(262143)]
    [InlineData(262144)]
    public void A_single_bit_at_a_word_edge_is_found_from_everywhere_before_it(long bit)
    {
        var bitmap = new HBitmap(Summary2 + 1);
        bitmap.Set(bit, 1);

        Assert.Equal(1, bitmap.Count);
        Assert.True(bitmap.Get(bit));
        Assert.False(bitmap.Get(bit - 1));
        Assert.False(bitmap.Get(bit + 1));
        Assert.Equal(bit, bitmap.NextSet(0));
        Assert.Equal(bit, bitmap.NextSet(bit));
        Assert.Equal(bit, bitmap.NextSet(bit / 2));
        Assert.Equal(-1, bitmap.NextSet(bit + 1));
        Assert.Equal(bit == 0 ? 1 : 0, bitmap.NextClear(0));
        Assert.Equal(bit + 1, bitmap.NextClear(bit));
    }

    [Fact]
    public void Clearing_the_only_bit_under_a_high_summary_word_clears_the_summaries_above_it()
    {
        // 4 levels: bit 262144 is alone in level-0 word 4096, level-1 word 64 and level-2 word 1.
        var bitmap = new HBitmap(Summary2 + 1);
        bitmap.Set(10, 1);
        bitmap.Set(Summary2, 1);
        Assert.Equal(Summary2, bitmap.NextSet(11));

        bitmap.Reset(Summary2, 1);
        Assert.Equal(-1, bitmap.NextSet(11));
        Assert.Equal(10, bitmap.NextSet(0));
        Assert.Equal(1, bitmap.Count);

        // A stale summary bit left by the reset would send the search down into an empty word and
        // report a bit that is not set, before the real one.
        bitmap.Reset(10, 1);
        bitmap.Set(200_000, 1);
        bitmap.Reset(200_000, 1);
        bitmap.Set(Summary2, 1);
        Assert.Equal(Summary2, bitmap.NextSet(0));
        Assert.Equal(1, bitmap.Count);
    }

    [Fact]
    public void Shrinking_drops_the_bits_past_the_end_and_growing_brings_back_clear_bits()
    {
        var bitmap = new HBitmap(Summary1 + 1);
        bitmap.Set(4000, 97);
        bitmap.Resize(4010);
        Assert.Equal(10, bitmap.Count);
        Assert.Equal(4010, bitmap.NextClear(4000));

        bitmap.Resize(5000);
        Assert.Equal(10, bitmap.Count);
        Assert.False(bitmap.Get(4050));
        Assert.Equal(-1, bitmap.NextSet(4010));
        Assert.Equal(4000, bitmap.NextSet(0));
    }

    [Fact]
    public void Shrinking_below_a_level_drops_the_summary_of_the_dropped_bits()
    {
        var bitmap = new HBitmap(Summary2 + 1);
        bitmap.Set(Summary2, 1);
        bitmap.Resize(Summary2);
        Assert.Equal(3, bitmap.Depth);
        Assert.Equal(0, bitmap.Count);
        Assert.Equal(-1, bitmap.NextSet(0));
    }

    [Fact]
    public void NextClear_in_a_full_bitmap_stops_at_the_size_or_the_limit()
    {
        var bitmap = new HBitmap(Summary1 + 3);
        bitmap.SetAll();
        Assert.Equal(Summary1 + 3, bitmap.Count);
        Assert.Equal(Summary1 + 3, bitmap.NextClear(0));
        Assert.Equal(100, bitmap.NextClear(5, 100));
        bitmap.Reset(Summary1 + 1, 1);
        Assert.Equal(Summary1 + 1, bitmap.NextClear(0));
        Assert.Equal(Summary1 + 3, bitmap.NextClear(Summary1 + 2));
    }
}
