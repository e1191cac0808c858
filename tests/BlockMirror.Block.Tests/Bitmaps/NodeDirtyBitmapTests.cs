using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Tests.Bitmaps;

/// <summary>Dirty bitmaps as a node marks them: completed writes, write-zeroes, discards and growth.</summary>
public sealed class NodeDirtyBitmapTests
{
    const long KiB = 1024;
    const long MiB = 1024 * KiB;

    static ByteRange[] Areas(DirtyBitmap bitmap) => [.. bitmap.EnumerateDirtyAreas()];

    [Fact]
    public async Task Writes_write_zeroes_and_discards_mark_every_enabled_bitmap()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1 * MiB));
        var fine = disk.CreateDirtyBitmap(4 * KiB, "fine");
        var coarse = disk.CreateDirtyBitmap(64 * KiB, "coarse");
        Assert.Equal([fine, coarse], disk.DirtyBitmaps);

        await disk.WriteAsync(5000, new byte[100]);
        await disk.WriteZeroesAsync(200 * KiB, 8 * KiB);
        await disk.DiscardAsync(700 * KiB, 4 * KiB);

        Assert.Equal([new(4 * KiB, 4 * KiB), new(200 * KiB, 8 * KiB), new(700 * KiB, 4 * KiB)], Areas(fine));
        Assert.Equal([new(0, 64 * KiB), new(192 * KiB, 64 * KiB), new(640 * KiB, 64 * KiB)], Areas(coarse));
    }

    [Fact]
    public async Task Reads_flushes_and_refused_writes_mark_nothing()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1 * MiB));
        var bitmap = disk.CreateDirtyBitmap(4 * KiB);

        await disk.ReadAsync(0, new byte[64 * KiB]);
        await disk.FlushAsync();
        await Assert.ThrowsAsync<BlockIOException>(async () => await disk.WriteAsync((1 * MiB) - 512, new byte[4 * KiB]));

        Assert.Equal(0, bitmap.DirtyBytes);
    }

    [Fact]
    public async Task A_disabled_bitmap_stays_clean_while_an_enabled_one_is_marked()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1 * MiB));
        var enabled = disk.CreateDirtyBitmap(64 * KiB, "enabled");
        var disabled = disk.CreateDirtyBitmap(64 * KiB, "disabled");
        disabled.Enabled = false;

        await disk.WriteAsync(0, new byte[512]);
        await disk.WriteZeroesAsync(128 * KiB, 4 * KiB);
        await disk.DiscardAsync(256 * KiB, 4 * KiB);
        Assert.Equal(0, disabled.DirtyBytes);
        Assert.Equal(192 * KiB, enabled.DirtyBytes);

        // Enabling again tracks from then on; the missed writes stay missed, as in QEMU.
        disabled.Enabled = true;
        await disk.WriteAsync(512 * KiB, new byte[512]);
        Assert.Equal([new ByteRange(512 * KiB, 64 * KiB)], Areas(disabled));
    }

    [Fact]
    public async Task A_released_bitmap_is_no_longer_marked()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1 * MiB));
        var kept = disk.CreateDirtyBitmap(64 * KiB, "kept");
        var released = disk.CreateDirtyBitmap(64 * KiB, "released");

        disk.ReleaseDirtyBitmap(released);
        await disk.WriteAsync(0, new byte[512]);

        Assert.Equal([kept], disk.DirtyBitmaps);
        Assert.Equal(0, released.DirtyBytes);
        Assert.Equal(64 * KiB, kept.DirtyBytes);

        // The name is free again.
        Assert.Equal("released", disk.CreateDirtyBitmap(64 * KiB, "released").Name);
    }

    [Fact]
    public async Task Bitmap_names_are_unique_per_node()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1 * MiB));
        disk.CreateDirtyBitmap(64 * KiB, "b0");
        var ex = Assert.Throws<BlockGraphException>(() => disk.CreateDirtyBitmap(4 * KiB, "b0"));
        Assert.Equal("Bitmap already exists: b0", ex.Message);
        Assert.Single(disk.DirtyBitmaps);
    }

    [Fact]
    public async Task A_bad_granularity_is_refused_by_the_node_and_adds_nothing()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1 * MiB));
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => disk.CreateDirtyBitmap(3 * KiB));
        Assert.Contains("got 3072", ex.Message);
        Assert.Empty(disk.DirtyBitmaps);
    }

    [Fact]
    public async Task Growing_the_node_grows_its_bitmaps_and_marks_the_new_bytes()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1 * MiB));
        var fine = disk.CreateDirtyBitmap(4 * KiB);
        var coarse = disk.CreateDirtyBitmap(64 * KiB);
        await disk.WriteAsync(0, new byte[512]);

        await disk.TruncateAsync((1 * MiB) + 1000);

        Assert.Equal((1 * MiB) + 1000, fine.Length);
        Assert.Equal((1 * MiB) + 1000, coarse.Length);
        Assert.Equal([new(0, 4 * KiB), new(1 * MiB, 1000)], Areas(fine));
        Assert.Equal((4 * KiB) + 1000, fine.DirtyBytes);
        Assert.Equal([new(0, 64 * KiB), new(1 * MiB, 1000)], Areas(coarse));

        // Shrinking drops the bits past the new end and marks nothing.
        await disk.TruncateAsync(512 * KiB);
        Assert.Equal(512 * KiB, fine.Length);
        Assert.Equal([new ByteRange(0, 4 * KiB)], Areas(fine));
    }
}
