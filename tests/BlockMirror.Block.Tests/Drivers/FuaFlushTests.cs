using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// FUA on a driver without native FUA becomes the write followed by a flush, done by the node; a driver
/// with native FUA gets the flag and no flush.
/// </summary>
public sealed class FuaFlushTests : IDisposable
{
    const int Block = 4096;

    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    async Task<BlockNode> OpenFileAsync(BlockGraph graph, string aio = "threads")
    {
        var path = _dir.File("disk.raw");
        FileDriver.CreateFile(path, 16 * Block);
        var file = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path, Aio: aio));
        Assert.False(file.Capabilities.CanFua);
        Assert.Equal(aio, ((FileDriver)file.Driver).Engine);
        return file;
    }

    static Task SendFua(NodeEdge disk, string kind, RequestFlags flags) => kind switch
    {
        "write" => disk.WriteAsync(Block, Enumerable.Repeat((byte)0x99, Block).ToArray(), flags).AsTask(),
        "write-vector" => disk.WriteVectorAsync(Block, [Enumerable.Repeat((byte)0x99, 100).ToArray(), Enumerable.Repeat((byte)0x99, Block - 100).ToArray()], flags).AsTask(),
        _ => disk.WriteZeroesAsync(Block, Block, flags).AsTask(),
    };

    [SkippableTheory]
    [InlineData("write", "threads")]
    [InlineData("write-vector", "threads")]
    [InlineData("write-zeroes", "threads")]
    [InlineData("write", "io_uring")]
    [InlineData("write-vector", "io_uring")]
    [InlineData("write-zeroes", "io_uring")]
    public async Task A_fua_request_through_blkdebug_over_a_file_fails_when_flush_is_failed(string kind, string aio)
    {
        IoUringSupport.SkipUnlessAvailable(aio);
        await using var graph = new BlockGraph();
        var file = await OpenFileAsync(graph, aio);
        await file.WriteAsync(0, Enumerable.Repeat((byte)0x11, 16 * Block).ToArray());
        var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", file, new BlkdebugOptions([new BlkdebugRule(Operation: BlockOperation.Flush, Errno: BlockErrno.ENOSPC)]));
        var blkdebug = (BlkdebugFilter)dbg.Driver;
        var disk = graph.AttachRoot(dbg, new RootParent("test"));

        // Without FUA nothing flushes, so the flush rule does not fire.
        await SendFua(disk, kind, RequestFlags.None);
        Assert.Equal(0, blkdebug.InjectedCount);

        await file.WriteAsync(0, Enumerable.Repeat((byte)0x11, 16 * Block).ToArray());
        var ex = await Assert.ThrowsAsync<BlockIOException>(() => SendFua(disk, kind, RequestFlags.Fua));
        Assert.Equal(BlockOperation.Flush, ex.Operation);
        Assert.Equal(BlockErrno.ENOSPC, ex.Errno);
        Assert.Equal("dbg", ex.NodeName);
        Assert.Equal(1, blkdebug.InjectedCount);

        // The write itself went through before the flush failed.
        var data = new byte[Block];
        await file.ReadAsync(Block, data);
        Assert.All(data, b => Assert.Equal(kind == "write-zeroes" ? 0 : 0x99, b));
    }

    [Fact]
    public async Task A_fua_write_through_blkdebug_over_a_driver_with_native_fua_does_not_flush()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(16 * Block));
        Assert.True(disk.Capabilities.CanFua);
        var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", disk, new BlkdebugOptions([new BlkdebugRule(Operation: BlockOperation.Flush)]));
        var root = graph.AttachRoot(dbg, new RootParent("test"));

        await root.WriteAsync(0, new byte[Block], RequestFlags.Fua);
        await root.WriteZeroesAsync(0, Block, RequestFlags.Fua | RequestFlags.MayUnmap);
        Assert.Equal(0, ((BlkdebugFilter)dbg.Driver).InjectedCount);
        await Assert.ThrowsAsync<BlockIOException>(async () => await root.FlushAsync());
    }

    [Fact]
    public async Task Without_native_fua_the_driver_sees_the_write_without_the_flag_and_then_a_flush()
    {
        await using var graph = new BlockGraph();
        var file = await OpenFileAsync(graph);
        var (rec, recorder) = await RecordingFilter.OpenAsync(graph, "rec", file);
        var root = graph.AttachRoot(rec, new RootParent("test"));

        await root.WriteAsync(0, new byte[Block], RequestFlags.Fua);
        Assert.Equal([(BlockOperation.Write, RequestFlags.None), (BlockOperation.Flush, RequestFlags.None)], recorder.Calls);

        recorder.Clear();
        await root.WriteZeroesAsync(0, Block, RequestFlags.Fua | RequestFlags.MayUnmap);
        Assert.Equal([(BlockOperation.WriteZeroes, RequestFlags.MayUnmap), (BlockOperation.Flush, RequestFlags.None)], recorder.Calls);

        recorder.Clear();
        await root.WriteAsync(0, new byte[Block]);
        Assert.Equal([(BlockOperation.Write, RequestFlags.None)], recorder.Calls);
    }

    [Fact]
    public async Task With_native_fua_the_driver_sees_the_flag_and_no_flush()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(16 * Block));
        var (rec, recorder) = await RecordingFilter.OpenAsync(graph, "rec", disk);
        var root = graph.AttachRoot(rec, new RootParent("test"));

        await root.WriteAsync(0, new byte[Block], RequestFlags.Fua);
        await root.WriteVectorAsync(0, [new byte[Block]], RequestFlags.Fua);
        Assert.Equal([(BlockOperation.Write, RequestFlags.Fua), (BlockOperation.Write, RequestFlags.Fua)], recorder.Calls);
    }

    [Fact]
    public async Task Flush_on_a_read_only_node_does_nothing()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(16 * Block));
        var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", disk, new BlkdebugOptions([new BlkdebugRule()]), readOnly: true);
        var root = graph.AttachRoot(dbg, new RootParent("test"));

        // Nothing can have been written through it, so there is nothing to make durable: the driver is not asked.
        await root.FlushAsync();
        Assert.Equal(0, ((BlkdebugFilter)dbg.Driver).InjectedCount);
    }
}
