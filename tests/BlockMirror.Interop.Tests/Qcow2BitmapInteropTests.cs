using System.Globalization;
using System.Text.Json;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Interop.Tests;

/// <summary>
/// Persistent dirty bitmaps both ways with the real qemu-img and qemu-io: bitmaps they make (<c>qemu-img bitmap</c>)
/// and fill (<c>qemu-io</c> writes while a bitmap is enabled) read here with their flags, granularity and bits;
/// bitmaps stored here are listed by <c>qemu-img info</c>, pass <c>qemu-img check</c> with no leak, and come back
/// with the same bits after QEMU has loaded and stored them again.
/// </summary>
public sealed class Qcow2BitmapInteropTests : IDisposable
{
    const long Size = 4 << 20;

    readonly TempDirectory _dir = new("blockmirror-qcow2-bitmap-interop-");

    public void Dispose() => _dir.Dispose();

    static string Text(long value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>The chunks of <paramref name="granularity"/> bytes that the writes touch: what an enabled bitmap holds after them.</summary>
    static SortedSet<long> Touched(long granularity, IEnumerable<(long Offset, long Length)> writes)
    {
        var chunks = new SortedSet<long>();
        foreach (var (offset, length) in writes)
        {
            for (var c = offset / granularity; c <= (offset + length - 1) / granularity; c++)
            {
                chunks.Add(c);
            }
        }

        return chunks;
    }

    static SortedSet<long> DirtyChunks(DirtyBitmap bitmap)
    {
        var chunks = new SortedSet<long>();
        foreach (var area in bitmap.EnumerateDirtyAreas())
        {
            for (var c = area.Offset / bitmap.Granularity; c <= (area.End - 1) / bitmap.Granularity; c++)
            {
                chunks.Add(c);
            }
        }

        return chunks;
    }

    static IEnumerable<string> QemuIoWrites(IEnumerable<(long Offset, long Length)> writes) =>
        writes.SelectMany(w => new[] { "-c", $"write -P 0x5a {Text(w.Offset)} {Text(w.Length)}" });

    async Task<string> CreateAsync(string name, params string[] options)
    {
        ExternalTool.Require("qemu-img");
        ExternalTool.Require("qemu-io");
        var path = _dir.File(name);
        await ExternalTool.RunCheckedAsync("qemu-img", ["create", "-q", "-f", "qcow2", .. options, path, Text(Size)]);
        return path;
    }

    /// <summary>The bitmaps qemu-img info lists, in its order, each as "name granularity flag,flag".</summary>
    static async Task<List<string>> QemuBitmapsAsync(string path, bool forceShare = false)
    {
        var json = await ExternalTool.RunCheckedAsync("qemu-img", ["info", "--output=json", .. forceShare ? new[] { "-U" } : [], path]);
        using var document = JsonDocument.Parse(json);
        var result = new List<string>();
        if (document.RootElement.GetProperty("format-specific").GetProperty("data").TryGetProperty("bitmaps", out var bitmaps))
        {
            foreach (var b in bitmaps.EnumerateArray())
            {
                var flags = string.Join(",", b.GetProperty("flags").EnumerateArray().Select(f => f.GetString()!));
                result.Add($"{b.GetProperty("name").GetString()} {b.GetProperty("granularity").GetInt64()} {flags}".TrimEnd());
            }
        }

        return result;
    }

    static async Task AssertQemuCheckCleanAsync(string path)
    {
        var check = await ExternalTool.RunAsync("qemu-img", ["check", path]);
        Assert.True(check.ExitCode == 0, $"qemu-img check failed:\n{check.StandardOutput}{check.StandardError}");
        Assert.Contains("No errors were found on the image.", check.StandardOutput);
    }

    [SkippableFact]
    public async Task Bitmaps_made_and_filled_by_qemu_read_with_their_flags_granularity_and_bits()
    {
        var path = await CreateAsync("made-by-qemu.qcow2");
        (long, long)[] first = [(0, 4096), (1 << 20, 65536 + 512), (3 << 20, 1), (Size - 512, 512)];
        (long, long)[] second = [(2 << 20, 131072), (70_000, 3000)];
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", path, "fine", "-g", "512");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", path, "coarse", "-g", "1M");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--disable", path, "off");
        await ExternalTool.RunCheckedAsync("qemu-io", ["-f", "qcow2", .. QemuIoWrites(first), path]);
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--disable", path, "coarse");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", path, "later");
        await ExternalTool.RunCheckedAsync("qemu-io", ["-f", "qcow2", .. QemuIoWrites(second), path]);
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--disable", path, "merged", "-g", "128k");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--merge", "later", path, "merged");

        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", ReadOnly: true));
        var bitmaps = (IPersistentBitmaps)node.Driver;

        Assert.Equal(
            ["fine 512 auto", "coarse 1048576 -", "off 65536 -", "later 65536 auto", "merged 131072 -"],
            bitmaps.StoredBitmaps.Select(b => $"{b.Name} {b.Granularity} {(b.InUse ? "in-use " : "")}{(b.Auto ? "auto" : "-")}"));
        Assert.Equal(Touched(512, [.. first, .. second]), DirtyChunks(bitmaps.FindPersistentBitmap("fine")!));
        Assert.Equal(Touched(1 << 20, first), DirtyChunks(bitmaps.FindPersistentBitmap("coarse")!));
        Assert.Empty(DirtyChunks(bitmaps.FindPersistentBitmap("off")!));
        Assert.Equal(Touched(65536, second), DirtyChunks(bitmaps.FindPersistentBitmap("later")!));
        Assert.Equal(Touched(131072, second), DirtyChunks(bitmaps.FindPersistentBitmap("merged")!));
        Assert.False(bitmaps.FindPersistentBitmap("merged")!.Enabled);
        Assert.True(bitmaps.FindPersistentBitmap("fine")!.Enabled);

        // Read-only: nothing may change them, and nothing is written.
        var before = File.ReadAllBytes(path);
        var removal = await Assert.ThrowsAsync<BlockGraphException>(() => bitmaps.RemovePersistentBitmapAsync("fine").AsTask());
        Assert.Equal("Bitmap 'fine' is readonly and cannot be modified", removal.Message);
        var addition = Assert.Throws<BlockGraphException>(() => bitmaps.AddPersistentBitmap("new", 65536, disabled: false));
        Assert.Contains("Can't make bitmap 'new' persistent", addition.Message, StringComparison.Ordinal);
        await graph.DisposeAsync();
        Assert.Equal(before, File.ReadAllBytes(path));
    }

    [SkippableFact]
    public async Task Bitmaps_stored_here_are_listed_checked_and_reloaded_by_qemu_with_the_same_bits()
    {
        var path = await CreateAsync("stored-here.qcow2", "-o", "cluster_size=4k");
        (long, long)[] ours = [(0, 512), (65536, 70_000), (Size - 4096, 4096)];
        (long, long)[] theirs = [(1 << 20, 8192), (3 << 20, 512)];

        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2"));
            var bitmaps = (IPersistentBitmaps)node.Driver;
            // 512-byte granularity on 4 MiB: 1 KiB of data, so with 4 KiB clusters a one-cluster table.
            bitmaps.AddPersistentBitmap("tracking", 512, disabled: false);
            bitmaps.AddPersistentBitmap("frozen", 65536, disabled: true);
            bitmaps.AddPersistentBitmap("coarse", 1 << 20, disabled: false);
            bitmaps.FindPersistentBitmap("frozen")!.SetDirty(2 << 20, 1);
            foreach (var (offset, length) in ours)
            {
                await node.WriteAsync(offset, new byte[length]);
            }

            // Removed before the close: it never reaches the image.
            bitmaps.AddPersistentBitmap("gone", 65536, disabled: false);
            Assert.True(await bitmaps.RemovePersistentBitmapAsync("gone"));
        }

        Assert.Equal(["tracking 512 auto", "frozen 65536", "coarse 1048576 auto"], await QemuBitmapsAsync(path));
        await AssertQemuCheckCleanAsync(path);

        // QEMU loads our bitmaps, marks its writes in the enabled ones and stores them again: what it stores is
        // what it read plus what it wrote.
        await ExternalTool.RunCheckedAsync("qemu-io", ["-f", "qcow2", .. QemuIoWrites(theirs), path]);
        await AssertQemuCheckCleanAsync(path);
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", ReadOnly: true));
            var bitmaps = (IPersistentBitmaps)node.Driver;
            Assert.Equal(Touched(512, [.. ours, .. theirs]), DirtyChunks(bitmaps.FindPersistentBitmap("tracking")!));
            Assert.Equal([32], DirtyChunks(bitmaps.FindPersistentBitmap("frozen")!));
            Assert.Equal(Touched(1 << 20, [.. ours, .. theirs]), DirtyChunks(bitmaps.FindPersistentBitmap("coarse")!));
        }
    }

    [SkippableFact]
    public async Task A_writable_open_marks_the_bitmaps_in_use_until_the_clean_close_and_frees_what_it_replaces()
    {
        var path = await CreateAsync("in-use.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", path, "b0");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--disable", path, "b1");
        await ExternalTool.RunCheckedAsync("qemu-io", ["-f", "qcow2", .. QemuIoWrites([(0, 65536)]), path]);

        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2"));
            // Open for writing: QEMU, reading the image meanwhile, must not trust the bitmaps.
            Assert.Equal(["b0 65536 in-use,auto", "b1 65536 in-use"], await QemuBitmapsAsync(path, forceShare: true));
            await node.WriteAsync(1 << 20, new byte[4096]);
            await ((IPersistentBitmaps)node.Driver).RemovePersistentBitmapAsync("b1");
            // Removed at once (QEMU's block-dirty-bitmap-remove), while b0 stays in use.
            Assert.Equal(["b0 65536 in-use,auto"], await QemuBitmapsAsync(path, forceShare: true));
        }

        Assert.Equal(["b0 65536 auto"], await QemuBitmapsAsync(path));
        await AssertQemuCheckCleanAsync(path);
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", ReadOnly: true));
            Assert.Equal([0, 16], DirtyChunks(((IPersistentBitmaps)node.Driver).FindPersistentBitmap("b0")!));
        }
    }

    [SkippableFact]
    public async Task A_bitmap_found_in_use_is_kept_as_it_is_and_not_trusted()
    {
        var path = await CreateAsync("found-in-use.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", path, "stale");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", path, "good");
        await ExternalTool.RunCheckedAsync("qemu-io", ["-f", "qcow2", .. QemuIoWrites([(0, 512)]), path]);
        await using (var graph = new BlockGraph())
        {
            // A crash while open for writing: the in-use mark is what remains.
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2"));
            var copy = _dir.File("crashed.qcow2");
            File.Copy(path, copy);
            path = copy;
        }

        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2"));
            var bitmaps = (IPersistentBitmaps)node.Driver;
            Assert.Null(bitmaps.FindPersistentBitmap("stale"));
            Assert.Null(bitmaps.FindPersistentBitmap("good"));
            Assert.Throws<BlockGraphException>(() => bitmaps.AddPersistentBitmap("stale", 65536, disabled: false));
            await node.WriteAsync(2 << 20, new byte[512]);
        }

        // As QEMU leaves such bitmaps: in the image, still in use, until someone removes them.
        Assert.Equal(["stale 65536 in-use,auto", "good 65536 in-use,auto"], await QemuBitmapsAsync(path));
        await AssertQemuCheckCleanAsync(path);
    }

    [SkippableFact]
    public async Task A_store_that_fails_at_the_header_leaves_the_old_bitmaps_in_use_and_the_image_consistent()
    {
        var path = await CreateAsync("failed-store.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", path, "b0");
        var data = new byte[65536];
        new Random(5).NextBytes(data);

        var graph = new BlockGraph();
        var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path));
        var debug = await BlkdebugFilter.OpenAsync(graph, "debug", file);
        var node = await Qcow2Driver.OpenAsync(graph, "disk", debug);
        await node.WriteAsync(1 << 20, data);
        // From now on the header cannot be written: the store at close has written its new directory, tables and
        // data, and fails where the header would point at them.
        ((BlkdebugFilter)debug.Driver).AddRule(new BlkdebugRule(BlockOperation.Write, Offset: 0, Length: 512));
        await Assert.ThrowsAnyAsync<IOException>(async () => await graph.DisposeAsync());

        Assert.Equal(["b0 65536 in-use,auto"], await QemuBitmapsAsync(path));
        await AssertQemuCheckCleanAsync(path);
        var copy = _dir.File("failed-store.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", path, copy);
        Assert.Equal(data, File.ReadAllBytes(copy).AsSpan(1 << 20, data.Length).ToArray());
    }
}
