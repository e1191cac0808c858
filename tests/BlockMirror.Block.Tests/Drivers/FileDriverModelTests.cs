using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// The file driver on a sparse file in the temp directory (ext4 in CI) against a byte array: buffered with
/// unaligned requests, and O_DIRECT with aligned requests from aligned and misaligned buffers; discard
/// punching holes (Unmap) or doing nothing (Ignore).
/// </summary>
public sealed class FileDriverModelTests : IDisposable
{
    const int Block = 4096;

    // Buffered: an odd size, so the last file system block is partial. O_DIRECT needs whole blocks.
    const long BufferedSize = (1 << 20) + 777;
    const long DirectSize = 1 << 20;

    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    Task<(BlockGraph Graph, NodeEdge Disk)> OpenAsync(string name, long size, bool direct, FileDiscardMode discard) =>
        OpenAsync(_dir, name, size, direct, discard);

    static async Task<(BlockGraph Graph, NodeEdge Disk)> OpenAsync(TempDirectory dir, string name, long size, bool direct, FileDiscardMode discard, string aio = "threads")
    {
        var path = dir.File(name);
        FileDriver.CreateFile(path, size);
        var graph = new BlockGraph();
        var node = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path, Direct: direct, Aio: aio, Discard: discard));
        Assert.Equal(discard == FileDiscardMode.Unmap, node.Capabilities.CanDiscard);
        // Each engine must really be the one in use: a silent fallback would test the threads twice.
        Assert.Equal(aio, ((FileDriver)node.Driver).Engine);
        return (graph, graph.AttachRoot(node, new RootParent("test")));
    }

    static ModelProfile Profile(long size, bool direct, FileDiscardMode discard, BufferKind buffers) => new()
    {
        Size = size,
        Alignment = direct ? FileDriver.DirectAlignment : 1,
        Granularity = Block,
        DiscardZeroes = discard == FileDiscardMode.Unmap,
        DiscardReportsZero = discard == FileDiscardMode.Unmap,

        // With Unmap, may-unmap zeroing punches holes; otherwise zero-range keeps the blocks (what
        // SEEK_DATA then says about them depends on the file system, so the model says nothing).
        WriteZeroesStatus = discard == FileDiscardMode.Unmap ? ZeroedStatus.ZeroWhenMayUnmap : ZeroedStatus.Unknown,
        StartsZero = true,
        HostOffsetIsOffset = true,
        Buffers = buffers,
    };

    [SkippableTheory]
    [InlineData(FileDiscardMode.Unmap, "threads")]
    [InlineData(FileDiscardMode.Ignore, "threads")]
    [InlineData(FileDiscardMode.Unmap, "io_uring")]
    [InlineData(FileDiscardMode.Ignore, "io_uring")]
    public async Task Buffered_random_unaligned_requests_match_the_model(FileDiscardMode discard, string aio)
    {
        await SkipUnlessPunchHolesAsync(discard);
        IoUringSupport.SkipUnlessAvailable(aio);
        await Seeds.RunAsync(Seeds.Range(8), async seed =>
        {
            // A directory per seed, deleted after the graph closes, so long runs do not fill the disk.
            using var dir = new TempDirectory();
            var (graph, disk) = await OpenAsync(dir, $"buffered-{discard}-{seed}.raw", BufferedSize, direct: false, discard, aio);
            await using var _ = graph;
            using var runner = new ModelRunner(disk, Profile(BufferedSize, direct: false, discard, BufferKind.Heap), seed);
            await runner.RunAsync(steps: 300, checkEvery: 50);
            Assert.True(runner.Writes > 0 && runner.WriteZeroes > 0 && runner.Discards > 0 && runner.StatusQueries > 0);
        });
    }

    [SkippableTheory]
    [InlineData(FileDiscardMode.Unmap, "threads")]
    [InlineData(FileDiscardMode.Ignore, "threads")]
    [InlineData(FileDiscardMode.Unmap, "io_uring")]
    [InlineData(FileDiscardMode.Ignore, "io_uring")]
    public async Task Direct_random_aligned_requests_from_aligned_and_misaligned_buffers_match_the_model(FileDiscardMode discard, string aio)
    {
        await SkipUnlessPunchHolesAsync(discard);
        IoUringSupport.SkipUnlessAvailable(aio);
        await Seeds.RunAsync(Seeds.Range(8), async seed =>
        {
            using var dir = new TempDirectory();
            var (graph, disk) = await OpenAsync(dir, $"direct-{discard}-{seed}.raw", DirectSize, direct: true, discard, aio);
            await using var _ = graph;
            using var runner = new ModelRunner(disk, Profile(DirectSize, direct: true, discard, BufferKind.Mixed), seed);
            await runner.RunAsync(steps: 200, checkEvery: 50);
            Assert.True(runner.MisalignedBufferRequests > 0, "the bounce path was not exercised");
        });
    }

    static Task SkipUnlessPunchHolesAsync(FileDiscardMode discard) =>
        discard == FileDiscardMode.Unmap ? PunchHoleSupport.SkipUnlessAvailableAsync() : Task.CompletedTask;

    [Fact]
    public async Task A_fresh_sparse_file_reports_one_zero_run()
    {
        var (graph, disk) = await OpenAsync("fresh.raw", BufferedSize, direct: false, FileDiscardMode.Ignore);
        await using var _ = graph;
        var status = await disk.GetBlockStatusAsync(0, BufferedSize);
        Assert.Equal(new BlockStatus(BlockStatusFlags.Zero | BlockStatusFlags.Allocated | BlockStatusFlags.OffsetValid, BufferedSize, 0), status);
    }

    [SkippableFact]
    public async Task With_unmap_discarded_whole_blocks_are_holes_and_partial_blocks_read_zero()
    {
        await PunchHoleSupport.SkipUnlessAvailableAsync();
        var (graph, disk) = await OpenAsync("holes.raw", 16 * Block, direct: false, FileDiscardMode.Unmap);
        await using var _ = graph;
        var data = new byte[16 * Block];
        data.AsSpan().Fill(0x3C);
        await disk.WriteAsync(0, data);
        await disk.FlushAsync();

        // Blocks 2..5 whole plus 100 bytes of block 1 and 100 bytes of block 6.
        await disk.DiscardAsync(2 * Block - 100, 4 * Block + 200);
        await disk.WriteZeroesAsync(10 * Block, 2 * Block, RequestFlags.MayUnmap);

        Assert.Equal(new BlockStatus(BlockStatusFlags.Data | BlockStatusFlags.Allocated | BlockStatusFlags.OffsetValid, 2 * Block, 0),
            await disk.GetBlockStatusAsync(0, 16 * Block));
        Assert.Equal(new BlockStatus(BlockStatusFlags.Zero | BlockStatusFlags.Allocated | BlockStatusFlags.OffsetValid, 4 * Block, 2 * Block),
            await disk.GetBlockStatusAsync(2 * Block, 14 * Block));
        Assert.True((await disk.GetBlockStatusAsync(6 * Block, Block)).IsData);
        Assert.Equal(new BlockStatus(BlockStatusFlags.Zero | BlockStatusFlags.Allocated | BlockStatusFlags.OffsetValid, 2 * Block, 10 * Block),
            await disk.GetBlockStatusAsync(10 * Block, 6 * Block));

        var read = new byte[16 * Block];
        await disk.ReadAsync(0, read);
        Assert.All(read[..(2 * Block - 100)], b => Assert.Equal(0x3C, b));
        Assert.All(read[(2 * Block - 100)..(6 * Block + 100)], b => Assert.Equal(0, b));
        Assert.All(read[(6 * Block + 100)..(10 * Block)], b => Assert.Equal(0x3C, b));
        Assert.All(read[(10 * Block)..(12 * Block)], b => Assert.Equal(0, b));
        Assert.All(read[(12 * Block)..], b => Assert.Equal(0x3C, b));
    }

    [Fact]
    public async Task With_ignore_discard_keeps_the_data_and_write_zeroes_keeps_the_blocks()
    {
        var (graph, disk) = await OpenAsync("keep.raw", 64 * Block, direct: false, FileDiscardMode.Ignore);
        await using var _ = graph;
        Assert.False(disk.Node.Capabilities.CanDiscard);
        Assert.False(disk.Node.Capabilities.CanUnmapOnZero);
        var data = new byte[64 * Block];
        data.AsSpan().Fill(0x77);
        await disk.WriteAsync(0, data);
        await disk.FlushAsync();
        var allocated = await AllocatedBytesAsync(disk);

        await disk.DiscardAsync(0, 32 * Block);
        await disk.WriteZeroesAsync(32 * Block, 32 * Block, RequestFlags.MayUnmap);
        await disk.FlushAsync();

        var read = new byte[64 * Block];
        await disk.ReadAsync(0, read);
        Assert.All(read[..(32 * Block)], b => Assert.Equal(0x77, b));
        Assert.All(read[(32 * Block)..], b => Assert.Equal(0, b));
        Assert.Equal(allocated, await AllocatedBytesAsync(disk));
    }

    [SkippableFact]
    public async Task With_unmap_discard_and_may_unmap_zeroing_release_the_blocks()
    {
        await PunchHoleSupport.SkipUnlessAvailableAsync();
        var (graph, disk) = await OpenAsync("release.raw", 64 * Block, direct: false, FileDiscardMode.Unmap);
        await using var _ = graph;
        var data = new byte[64 * Block];
        data.AsSpan().Fill(0x77);
        await disk.WriteAsync(0, data);
        await disk.FlushAsync();
        Assert.True(await AllocatedBytesAsync(disk) >= 64 * Block);

        await disk.DiscardAsync(0, 32 * Block);
        await disk.WriteZeroesAsync(32 * Block, 32 * Block, RequestFlags.MayUnmap);
        await disk.FlushAsync();
        Assert.Equal(0, await AllocatedBytesAsync(disk));
    }

    /// <summary>The file's allocated size (st_blocks), from coreutils stat.</summary>
    static async Task<long> AllocatedBytesAsync(NodeEdge disk)
    {
        var output = await ExternalTool.RunCheckedAsync("stat", "--format=%b %B", disk.Node.Driver.FileName!);
        var parts = output.Split(' ', StringSplitOptions.TrimEntries);
        return long.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture) * long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
    }
}
