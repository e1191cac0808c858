using BlockMirror.Block.Drivers.Null;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>null-co: reads zeroes or nothing, writes vanish, truncate is refused.</summary>
public sealed class NullDriverTests
{
    const long Size = 1 << 20;
    const byte Stale = 0xEE;

    static async Task<(BlockGraph Graph, NodeEdge Disk)> OpenAsync(bool readZeroes)
    {
        var graph = new BlockGraph();
        var node = await NullDriver.OpenAsync(graph, "null", new NullDriverOptions(Size, readZeroes));
        return (graph, graph.AttachRoot(node, new RootParent("test")));
    }

    static byte[] StaleBuffer(int length) => Enumerable.Repeat(Stale, length).ToArray();

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Reads_fill_zeroes_or_leave_the_buffer_untouched(bool readZeroes)
    {
        var (graph, disk) = await OpenAsync(readZeroes);
        await using var _ = graph;
        var buffer = StaleBuffer(8192);
        await disk.ReadAsync(100, buffer);
        Assert.All(buffer, b => Assert.Equal(readZeroes ? 0 : Stale, b));

        var segments = new[] { StaleBuffer(10), StaleBuffer(3000) };
        await disk.ReadVectorAsync(Size - 3010, [.. segments.Select(s => (Memory<byte>)s)]);
        Assert.All(segments.SelectMany(s => s), b => Assert.Equal(readZeroes ? 0 : Stale, b));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Writes_are_discarded(bool readZeroes)
    {
        var (graph, disk) = await OpenAsync(readZeroes);
        await using var _ = graph;
        await disk.WriteAsync(0, Enumerable.Repeat((byte)0x11, 4096).ToArray(), RequestFlags.Fua);
        await disk.WriteVectorAsync(4096, [new byte[] { 1, 2, 3 }]);
        await disk.WriteZeroesAsync(0, Size, RequestFlags.MayUnmap);
        await disk.DiscardAsync(0, Size);
        await disk.FlushAsync();

        var buffer = StaleBuffer(8192);
        await disk.ReadAsync(0, buffer);
        Assert.All(buffer, b => Assert.Equal(readZeroes ? 0 : Stale, b));
    }

    [Fact]
    public async Task Block_status_is_zero_with_read_zeroes_and_only_allocated_without()
    {
        var (graph, zeroes) = await OpenAsync(readZeroes: true);
        await using var _ = graph;
        // As QEMU's null-co, the offset is valid (the device maps onto itself).
        const BlockStatusFlags ZeroHere = BlockStatusFlags.Zero | BlockStatusFlags.Allocated | BlockStatusFlags.OffsetValid;
        Assert.Equal(new BlockStatus(ZeroHere, Size - 100, 100), await zeroes.GetBlockStatusAsync(100, 2 * Size));
        Assert.Equal(new BlockStatus(ZeroHere, 4096, 0), await zeroes.GetBlockStatusAsync(0, 4096));
        Assert.True(zeroes.Node.Capabilities.ZeroInit);

        var (graph2, nothing) = await OpenAsync(readZeroes: false);
        await using var _2 = graph2;
        Assert.Equal(new BlockStatus(BlockStatusFlags.Allocated | BlockStatusFlags.OffsetValid, Size, 0), await nothing.GetBlockStatusAsync(0, Size));
        Assert.False(nothing.Node.Capabilities.ZeroInit);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Truncate_is_refused_by_the_node_with_ENOTSUP(bool readZeroes)
    {
        var (graph, disk) = await OpenAsync(readZeroes);
        await using var _ = graph;
        Assert.False(disk.Node.Capabilities.CanTruncate);
        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await disk.TruncateAsync(2 * Size));
        Assert.Equal(BlockErrno.ENOTSUP, ex.Errno);
        Assert.Equal("null", ex.NodeName);
        Assert.Equal(BlockOperation.Truncate, ex.Operation);
        Assert.Contains("driver 'null-co' cannot change the length", ex.Message);
        Assert.Equal(Size, disk.Node.Length);
    }

    [Fact]
    public async Task Requests_past_the_end_are_refused_and_the_default_size_is_one_gibibyte()
    {
        var (graph, disk) = await OpenAsync(readZeroes: true);
        await using var _ = graph;
        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await disk.WriteAsync(Size - 1, new byte[2]));
        Assert.Equal(BlockErrno.EINVAL, ex.Errno);

        var big = await NullDriver.OpenAsync(graph, "big", new NullDriverOptions());
        Assert.Equal(1L << 30, big.Length);
    }
}
