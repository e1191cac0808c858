using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Bitmaps;

/// <summary>DirtyBitmap's byte-level contract against <see cref="ChunkModel"/>, plus worked examples.</summary>
public sealed class DirtyBitmapTests
{
    const long KiB = 1024;
    const long MiB = 1024 * KiB;

    const int StepsPerSequence = 30;

    [Theory]
    [InlineData(512)]
    [InlineData(4096)]
    [InlineData(65536)]
    public void Random_operation_sequences_match_the_chunk_model(long granularity) =>
        Seeds.Run(Seeds.Range(60), seed => RunSequence(new Random(unchecked((seed * 7919) + (int)granularity)), granularity));

    static void RunSequence(Random random, long granularity)
    {
        var length = RandomLength(random, granularity);
        var bitmap = new DirtyBitmap(granularity, length);
        var model = new ChunkModel(granularity, length);
        var trace = new List<string> { $"new({granularity}, {length})" };
        Compare(bitmap, model, random, trace);
        for (var step = 0; step < StepsPerSequence; step++)
        {
            var choice = random.Next(100);
            if (choice < 45)
            {
                var (offset, count) = RandomRange(random, model);
                trace.Add($"SetDirty({offset}, {count})");
                bitmap.SetDirty(offset, count);
                model.SetDirty(offset, count);
            }
            else if (choice < 85)
            {
                var (offset, count) = RandomRange(random, model);
                trace.Add($"ResetDirty({offset}, {count})");
                bitmap.ResetDirty(offset, count);
                model.ResetDirty(offset, count);
            }
            else if (choice < 89)
            {
                trace.Add("SetAll()");
                bitmap.SetAll();
                model.SetAll();
            }
            else if (choice < 92)
            {
                trace.Add("Clear()");
                bitmap.Clear();
                model.Clear();
            }
            else
            {
                var newLength = RandomLength(random, granularity);
                trace.Add($"Resize({newLength})");
                bitmap.Resize(newLength);
                model.Resize(newLength);
            }

            Compare(bitmap, model, random, trace);
        }
    }

    /// <summary>Up to a few thousand chunks (so two and three HBitmap levels), often with a partial last chunk.</summary>
    static long RandomLength(Random random, long granularity)
    {
        var chunks = random.Next(5) == 0 ? random.Next(4090, 4200) : random.Next(0, 300);
        return random.Next(3) switch
        {
            0 => chunks * granularity,
            1 => (chunks * granularity) + random.NextInt64(1, granularity),
            _ => random.NextInt64(0, (chunks * granularity) + 1),
        };
    }

    /// <summary>A range inside the device (as the node guarantees); aligned, unaligned, or reaching the end.</summary>
    static (long Offset, long Length) RandomRange(Random random, ChunkModel model)
    {
        var length = model.Length;
        if (length == 0)
        {
            return (0, 0);
        }

        var g = model.Granularity;
        var offset = random.Next(3) == 0
            ? random.NextInt64(0, (length + g - 1) / g) * g
            : random.NextInt64(0, length);
        var room = length - offset;
        var count = random.Next(5) switch
        {
            0 => room,
            1 => Math.Min(room, random.NextInt64(1, 3) * g),
            2 => Math.Min(room, random.NextInt64(1, 20)),
            _ => random.NextInt64(1, room + 1),
        };
        return (offset, count);
    }

    static void Compare(DirtyBitmap bitmap, ChunkModel model, Random random, List<string> trace)
    {
        var g = model.Granularity;
        var length = model.Length;
        Check(length, bitmap.Length, "Length", trace);
        Check(model.DirtyBytes, bitmap.DirtyBytes, "DirtyBytes", trace);

        // The device end, the partial last chunk past it, chunk edges, and random points.
        List<long> probes = [-1, 0, 1, length - 1, length, length + 1, ((length + g - 1) / g * g) - 1, (length + g - 1) / g * g];
        for (var i = 0; i < 4; i++)
        {
            var offset = random.NextInt64(0, Math.Max(1, length));
            probes.Add(offset);
            probes.Add(offset / g * g);
            probes.Add((offset / g * g) - 1);
        }

        long[] maxLengths = [0, 1, g - 1, g, g + 1, 3 * g, (3 * g) + 17, long.MaxValue];
        foreach (var probe in probes)
        {
            if (probe >= 0 && probe < length)
            {
                Check(model.IsByteDirty(probe), bitmap.IsDirty(probe), $"IsDirty({probe})", trace);
            }

            Check(model.NextDirty(probe), bitmap.NextDirty(probe), $"NextDirty({probe})", trace);
            Check(model.NextClean(probe), bitmap.NextClean(probe), $"NextClean({probe})", trace);
            var maxLength = maxLengths[random.Next(maxLengths.Length)];
            ByteRange? area = bitmap.TryGetNextDirtyArea(probe, maxLength, out var found) ? found : null;
            Check(model.NextDirtyArea(probe, maxLength), area, $"TryGetNextDirtyArea({probe}, {maxLength})", trace);
        }

        CheckEnumeration(bitmap, model, maxLengths[random.Next(maxLengths.Length)], trace);
    }

    /// <summary>The areas are ascending, disjoint, inside the device, wholly dirty, and add up to every dirty byte.</summary>
    static void CheckEnumeration(DirtyBitmap bitmap, ChunkModel model, long maxLength, List<string> trace)
    {
        // Bounded, so an iteration that never ends fails instead of hanging the run.
        var areas = bitmap.EnumerateDirtyAreas(maxLength).Take(model.Chunks + 1).ToList();
        var what = $"EnumerateDirtyAreas({maxLength})";
        Check(true, areas.Count <= model.Chunks, $"{what} ends", trace);
        long previousEnd = 0;
        long total = 0;
        foreach (var area in areas)
        {
            Check(true, area.Length > 0 && area.Offset >= previousEnd && area.End <= model.Length, $"{what} yields {area} after {previousEnd}", trace);
            Check(true, area.Length <= Math.Max(maxLength, model.Granularity), $"{what} keeps {area} within the maximum", trace);
            for (var offset = area.Offset; offset < area.End; offset = ((offset / model.Granularity) + 1) * model.Granularity)
            {
                Check(true, model.IsByteDirty(offset), $"{what} yields {area}, clean at {offset}", trace);
            }

            previousEnd = area.End;
            total += area.Length;
        }

        Check(model.DirtyBytes, total, $"{what} total", trace);
    }

    static void Check<T>(T expected, T actual, string what, List<string> trace)
    {
        if (!EqualityComparer<T>.Default.Equals(expected, actual))
        {
            Assert.Fail($"{what}: expected {expected}, got {actual}; operations: {string.Join(", ", trace)}");
        }
    }

    // ----- Worked examples -----

    [Fact]
    public void Setting_marks_every_chunk_the_range_touches()
    {
        var bitmap = new DirtyBitmap(4 * KiB, 64 * KiB);
        bitmap.SetDirty((4 * KiB) - 1, 2);
        Assert.True(bitmap.IsDirty(0));
        Assert.True(bitmap.IsDirty((8 * KiB) - 1));
        Assert.False(bitmap.IsDirty(8 * KiB));
        Assert.Equal(8 * KiB, bitmap.DirtyBytes);
    }

    [Fact]
    public void Newly_dirtied_bytes_count_only_chunks_that_were_clean()
    {
        var bitmap = new DirtyBitmap(4 * KiB, 64 * KiB);
        bitmap.SetDirty(100, 10);
        Assert.Equal(4 * KiB, bitmap.NewlyDirtiedBytes);

        // Chunk 0 is still dirty: only chunk 1 is new.
        bitmap.SetDirty(0, 8 * KiB);
        Assert.Equal(8 * KiB, bitmap.NewlyDirtiedBytes);

        // Copied (cleared) and written again: counts again, and the count never goes down.
        bitmap.ResetDirty(0, 8 * KiB);
        Assert.Equal(8 * KiB, bitmap.NewlyDirtiedBytes);
        bitmap.SetDirty(4 * KiB, 1);
        Assert.Equal(12 * KiB, bitmap.NewlyDirtiedBytes);
    }

    [Fact]
    public void Resetting_clears_only_the_chunks_the_range_covers_completely()
    {
        var bitmap = new DirtyBitmap(4 * KiB, 64 * KiB);
        bitmap.SetAll();
        bitmap.ResetDirty(100, 8 * KiB);
        Assert.True(bitmap.IsDirty(0));
        Assert.False(bitmap.IsDirty(4 * KiB));
        Assert.True(bitmap.IsDirty(8 * KiB));
        Assert.Equal(60 * KiB, bitmap.DirtyBytes);

        bitmap.ResetDirty(0, (4 * KiB) - 1);
        Assert.True(bitmap.IsDirty(0));
    }

    [Fact]
    public void The_partial_last_chunk_counts_only_to_the_device_end_and_is_cleared_by_a_range_reaching_it()
    {
        // Chunks [0, 4096), [4096, 8192), [8192, 10000).
        var bitmap = new DirtyBitmap(4 * KiB, 10_000);
        bitmap.SetAll();
        Assert.Equal(10_000, bitmap.DirtyBytes);

        bitmap.ResetDirty(8 * KiB, 1000);
        Assert.True(bitmap.IsDirty(9999));

        bitmap.ResetDirty(8 * KiB, 10_000 - (8 * KiB));
        Assert.False(bitmap.IsDirty(9999));
        Assert.Equal(8 * KiB, bitmap.DirtyBytes);
    }

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

    [Fact]
    public void A_dirty_area_is_at_most_max_length_but_at_least_one_chunk()
    {
        var bitmap = new DirtyBitmap(64 * KiB, 1 * MiB);
        bitmap.SetAll();

        Assert.True(bitmap.TryGetNextDirtyArea(0, 256 * KiB, out var area));
        Assert.Equal(new ByteRange(0, 256 * KiB), area);

        Assert.True(bitmap.TryGetNextDirtyArea(0, 1, out area));
        Assert.Equal(new ByteRange(0, 64 * KiB), area);

        // Starting inside a chunk: the area still ends at a chunk boundary, within max length.
        Assert.True(bitmap.TryGetNextDirtyArea(100, 128 * KiB, out area));
        Assert.Equal(new ByteRange(100, (128 * KiB) - 100), area);

        Assert.True(bitmap.TryGetNextDirtyArea(0, long.MaxValue, out area));
        Assert.Equal(new ByteRange(0, 1 * MiB), area);
    }

    [Fact]
    public void A_dirty_area_stops_at_the_first_clean_chunk()
    {
        var bitmap = new DirtyBitmap(64 * KiB, 1 * MiB);
        bitmap.SetDirty(64 * KiB, 100);
        bitmap.SetDirty(128 * KiB, 64 * KiB);
        bitmap.SetDirty(512 * KiB, 1);

        Assert.Equal(
            [new ByteRange(64 * KiB, 128 * KiB), new ByteRange(512 * KiB, 64 * KiB)],
            bitmap.EnumerateDirtyAreas());
        Assert.Equal(192 * KiB, bitmap.DirtyBytes);
        Assert.Equal(0, bitmap.NextClean(0));
        Assert.Equal(192 * KiB, bitmap.NextClean(64 * KiB));
        Assert.Equal(512 * KiB, bitmap.NextDirty(192 * KiB));
    }

    [Fact]
    public void Resize_keeps_the_chunks_that_remain_and_adds_clean_ones()
    {
        var bitmap = new DirtyBitmap(4 * KiB, 64 * KiB);
        bitmap.SetDirty(0, 1);
        bitmap.SetDirty(60 * KiB, 1);

        bitmap.Resize(32 * KiB);
        Assert.Equal(32 * KiB, bitmap.Length);
        Assert.Equal(4 * KiB, bitmap.DirtyBytes);

        bitmap.Resize(128 * KiB);
        Assert.Equal(4 * KiB, bitmap.DirtyBytes);
        Assert.False(bitmap.IsDirty(60 * KiB));
        Assert.Equal(-1, bitmap.NextDirty(4 * KiB));
    }

    [Fact]
    public void A_negative_length_is_refused_and_changes_nothing()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new DirtyBitmap(4 * KiB, -1));
        var bitmap = new DirtyBitmap(4 * KiB, 64 * KiB);
        bitmap.SetAll();
        Assert.Throws<ArgumentOutOfRangeException>(() => bitmap.Resize(-1));
        Assert.Equal(64 * KiB, bitmap.Length);
        Assert.Equal(64 * KiB, bitmap.DirtyBytes);
    }

    [Theory]
    [InlineData(511)]
    [InlineData(3 * 1024)]
    [InlineData(4L * 1024 * 1024 * 1024)]
    [InlineData(0)]
    [InlineData(-4096)]
    public void A_bad_granularity_is_refused_naming_the_value(long granularity)
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => new DirtyBitmap(granularity, MiB));
        Assert.Equal("granularity", ex.ParamName);
        Assert.Contains($"got {granularity}", ex.Message);
        Assert.StartsWith(DirtyBitmap.ValidateGranularity(granularity, DirtyBitmap.MaxBitmapGranularity)!, ex.Message);
    }

    [Theory]
    [InlineData(512)]
    [InlineData(64 * 1024)]
    [InlineData(64L * 1024 * 1024)]
    public void Every_power_of_two_from_512_bytes_to_64_MiB_is_accepted(long granularity)
    {
        Assert.Null(DirtyBitmap.ValidateGranularity(granularity));
        Assert.Equal(granularity, new DirtyBitmap(granularity, MiB).Granularity);
    }
}
