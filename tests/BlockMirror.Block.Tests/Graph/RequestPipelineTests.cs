using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Block.Tests.Drivers;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Graph;

/// <summary>
/// The node's request pipeline: any byte range reaches any driver, padded to its alignment and cut to its
/// maximums (blkdebug above a recorder fails with EIO any request that breaks the limits it declares).
/// </summary>
public sealed class RequestPipelineTests : IDisposable
{
    const long Size = 1 << 20;
    const byte Old = 0x5A;
    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    sealed record Stack(BlockGraph Graph, NodeEdge Root, RecordingFilter Recorder, BlockNode Disk) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => Graph.DisposeAsync();
    }

    /// <summary>root -> blkdebug (limits) -> recorder -> memory, the memory filled with <see cref="Old"/>.</summary>
    static async Task<Stack> OpenLimitedAsync(BlkdebugOptions options)
    {
        var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(Size));
        await disk.WriteAsync(0, Enumerable.Repeat(Old, (int)Size).ToArray());
        var (rec, recorder) = await RecordingFilter.OpenAsync(graph, "rec", disk);
        var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", rec, options);
        return new Stack(graph, graph.AttachRoot(dbg, new RootParent("test")), recorder, disk);
    }

    static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Theory]
    [InlineData(0, 1)]
    [InlineData(1, 1)]
    [InlineData(511, 513)]
    [InlineData(4095, 2)]
    [InlineData(100, 3 * 4096)]
    [InlineData(4096, 40000)]
    [InlineData(7, 65536 + 5)]
    public async Task Unaligned_and_oversized_writes_and_reads_reach_the_driver_aligned_and_cut(long offset, int length)
    {
        await using var s = await OpenLimitedAsync(new BlkdebugOptions(Align: 4096, MaxTransfer: 8192));
        var expected = Enumerable.Repeat(Old, (int)Size).ToArray();
        var data = Pattern(length, length);
        await s.Root.WriteAsync(offset, data);
        data.CopyTo(expected, offset);

        var disk = new byte[Size];
        await s.Disk.ReadAsync(0, disk);
        Assert.Equal(expected, disk);

        var back = new byte[length];
        await s.Root.ReadAsync(offset, back);
        Assert.Equal(data, back);

        // Vectored, with segments that split blocks.
        var first = new byte[length / 3];
        var second = new byte[length - first.Length];
        await s.Root.ReadVectorAsync(offset, [first, second]);
        Assert.Equal(data, first.Concat(second));
        await s.Root.WriteVectorAsync(offset, [second, first]);
        second.CopyTo(expected, offset);
        first.CopyTo(expected, offset + second.Length);
        await s.Disk.ReadAsync(0, disk);
        Assert.Equal(expected, disk);
    }

    [Fact]
    public async Task An_aligned_request_that_fits_reaches_the_driver_as_it_is()
    {
        await using var s = await OpenLimitedAsync(new BlkdebugOptions(Align: 4096, MaxTransfer: 8192));
        await s.Root.WriteAsync(4096, new byte[8192], RequestFlags.Fua);
        await s.Root.ReadAsync(0, new byte[4096]);
        Assert.Equal([(BlockOperation.Write, RequestFlags.Fua), (BlockOperation.Read, RequestFlags.None)], s.Recorder.Calls);
    }

    [Fact]
    public async Task An_oversized_write_is_cut_into_pieces_of_the_max_transfer_each_with_fua()
    {
        await using var s = await OpenLimitedAsync(new BlkdebugOptions(Align: 4096, MaxTransfer: 8192));
        await s.Root.WriteAsync(0, new byte[5 * 8192], RequestFlags.Fua);
        Assert.Equal(Enumerable.Repeat((BlockOperation.Write, RequestFlags.Fua), 5), s.Recorder.Calls);
    }

    [Fact]
    public async Task Unaligned_write_zeroes_zero_the_middle_with_write_zeroes_and_the_ends_by_read_modify_write()
    {
        await using var s = await OpenLimitedAsync(new BlkdebugOptions(Align: 4096, MaxTransfer: 8192, MaxWriteZeroes: 8192));
        const long Offset = 100, Length = 5 * 8192 + 4096;
        await s.Root.WriteZeroesAsync(Offset, Length, RequestFlags.MayUnmap);

        var disk = new byte[Size];
        await s.Disk.ReadAsync(0, disk);
        var expected = Enumerable.Repeat(Old, (int)Size).ToArray();
        Array.Clear(expected, (int)Offset, (int)Length);
        Assert.Equal(expected, disk);

        // Head block and tail block: read + write each; the aligned middle [4096, 45056) cut at multiples of 8 KiB: 6 pieces.
        Assert.Equal(2, s.Recorder.Count(BlockOperation.Read));
        Assert.Equal(2, s.Recorder.Count(BlockOperation.Write));
        Assert.Equal(6, s.Recorder.Count(BlockOperation.WriteZeroes));
    }

    [Fact]
    public async Task Write_zeroes_inside_one_block_is_one_read_modify_write()
    {
        await using var s = await OpenLimitedAsync(new BlkdebugOptions(Align: 4096));
        await s.Root.WriteZeroesAsync(10, 20);
        var block = new byte[4096];
        await s.Disk.ReadAsync(0, block);
        Assert.Equal(Enumerable.Repeat(Old, 10).Concat(new byte[20]).Concat(Enumerable.Repeat(Old, 4066)), block);
        Assert.Equal([(BlockOperation.Read, RequestFlags.None), (BlockOperation.Write, RequestFlags.None)], s.Recorder.Calls);
    }

    [Fact]
    public async Task An_unaligned_discard_drops_the_partial_blocks_and_cuts_the_middle()
    {
        await using var s = await OpenLimitedAsync(new BlkdebugOptions(Align: 4096, MaxDiscard: 8192));
        await s.Root.DiscardAsync(100, 4 * 8192);
        Assert.Equal(Enumerable.Repeat((BlockOperation.Discard, RequestFlags.None), 4), s.Recorder.Calls);

        var disk = new byte[Size];
        await s.Disk.ReadAsync(0, disk);
        Assert.All(disk.AsSpan(0, 4096).ToArray(), b => Assert.Equal(Old, b));
        Assert.All(disk.AsSpan(4096, 7 * 4096).ToArray(), b => Assert.Equal(0, b));
        Assert.All(disk.AsSpan(8 * 4096, 4096).ToArray(), b => Assert.Equal(Old, b));

        // Inside one block: nothing at all reaches the driver.
        s.Recorder.Clear();
        await s.Root.DiscardAsync(4096 * 20 + 1, 4000);
        Assert.Equal(0, s.Recorder.Total);
    }

    [Fact]
    public async Task Unaligned_requests_marks_dirty_bitmaps_for_the_requested_range()
    {
        await using var s = await OpenLimitedAsync(new BlkdebugOptions(Align: 4096));
        var bitmap = s.Root.Node.CreateDirtyBitmap(512);
        await s.Root.WriteAsync(512, new byte[512]);
        Assert.Equal(512, bitmap.DirtyBytes);
    }

    [SkippableFact]
    public async Task An_O_DIRECT_file_takes_byte_granular_requests()
    {
        var path = _dir.File("direct.raw");
        var original = Pattern((int)Size, 1);
        await System.IO.File.WriteAllBytesAsync(path, original);
        await using (var graph = new BlockGraph())
        {
            var node = await FileDriver.OpenAsync(graph, "disk", new FileDriverOptions(path, Direct: true));
            var disk = graph.AttachRoot(node, new RootParent("test"));
            Assert.Equal(FileDriver.DirectAlignment, node.Limits.RequestAlignment);
            await disk.WriteAsync(100, Pattern(1, 2));
            await disk.WriteAsync(4095, Pattern(600, 3));
            await disk.WriteZeroesAsync(9000, 10);
            Pattern(1, 2).CopyTo(original, 100);
            Pattern(600, 3).CopyTo(original, 4095);
            Array.Clear(original, 9000, 10);

            var back = new byte[1000];
            await disk.ReadAsync(3333, back);
            Assert.Equal(original.AsSpan(3333, 1000).ToArray(), back);
        }

        Assert.Equal(original, await System.IO.File.ReadAllBytesAsync(path));
    }

    [Fact]
    public async Task An_aligned_request_allocates_nothing_in_the_pipeline()
    {
        await using var graph = new BlockGraph();
        var node = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(Size));
        var disk = graph.AttachRoot(node, new RootParent("test"));
        var buffer = new byte[4096];

        // Warm up: JIT, pooled state machines.
        for (var i = 0; i < 1000; i++)
        {
            await disk.WriteAsync(i % 16 * 4096, buffer);
            await disk.ReadAsync(i % 16 * 4096, buffer);
        }

        const int Count = 10_000;
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < Count; i++)
        {
            // The memory driver completes synchronously, so this measures the node and edge alone.
            var write = disk.WriteAsync(i % 16 * 4096, buffer);
            Assert.True(write.IsCompletedSuccessfully);
            var read = disk.ReadAsync(i % 16 * 4096, buffer);
            Assert.True(read.IsCompletedSuccessfully);
        }

        var perRequest = (GC.GetAllocatedBytesForCurrentThread() - before) / (2.0 * Count);
        Assert.True(perRequest < 1, $"{perRequest} bytes allocated per aligned request");
    }
}
