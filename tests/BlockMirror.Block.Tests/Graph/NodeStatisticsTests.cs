using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Tests.Graph;

/// <summary>
/// Per-node request statistics (what query-blockstats reports): each kind of request counted with its bytes on
/// every node it passes, failures and refusals apart, the highest offset written, the time of the last request.
/// </summary>
public sealed class NodeStatisticsTests
{
    const int Block = 4096;

    [Fact]
    public async Task Every_kind_of_request_is_counted_with_its_bytes_and_empty_ones_are_not()
    {
        await using var graph = new BlockGraph();
        var node = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(64 * Block));
        var disk = graph.AttachRoot(node, new RootParent("test"));
        var s = node.Statistics;
        Assert.Null(s.IdleTime);

        await disk.WriteAsync(0, new byte[3 * Block]);
        await disk.WriteVectorAsync(8 * Block, [new byte[100], new byte[Block - 100]]);
        await disk.WriteZeroesAsync(16 * Block, 5 * Block);
        await disk.DiscardAsync(32 * Block, 2 * Block);
        await disk.ReadAsync(Block, new byte[Block]);
        await disk.ReadVectorAsync(0, [new byte[10], new byte[20]]);
        await disk.FlushAsync();
        await disk.WriteAsync(Block, ReadOnlyMemory<byte>.Empty);
        await disk.ReadAsync(Block, Memory<byte>.Empty);

        Assert.Equal(4L * Block, s.Bytes(BlockOperation.Write));
        Assert.Equal(2, s.Operations(BlockOperation.Write));
        Assert.Equal(5L * Block, s.Bytes(BlockOperation.WriteZeroes));
        Assert.Equal(1, s.Operations(BlockOperation.WriteZeroes));
        Assert.Equal(2L * Block, s.Bytes(BlockOperation.Discard));
        Assert.Equal(1, s.Operations(BlockOperation.Discard));
        Assert.Equal(Block + 30, s.Bytes(BlockOperation.Read));
        Assert.Equal(2, s.Operations(BlockOperation.Read));
        Assert.Equal(1, s.Operations(BlockOperation.Flush));
        Assert.Equal(21L * Block, s.WriteHighestOffset); // the write-zeroes' end; the discard's is higher but does not count
        Assert.NotNull(s.IdleTime);
        for (var kind = BlockOperation.Read; kind <= BlockOperation.Flush; kind++)
        {
            Assert.Equal(0, s.Failed(kind));
            Assert.Equal(0, s.Invalid(kind));
        }
    }

    [Fact]
    public async Task Each_node_a_request_passes_counts_it_and_a_failure_below_counts_as_failed_without_bytes()
    {
        await using var graph = new BlockGraph();
        var memory = await MemoryDriver.OpenAsync(graph, "mem", new MemoryDriverOptions(64 * Block));
        var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", memory,
            new BlkdebugOptions([new BlkdebugRule(Operation: BlockOperation.Write, Offset: 10 * Block, Length: Block, Errno: BlockErrno.ENOSPC)]));
        var disk = graph.AttachRoot(dbg, new RootParent("test"));

        await disk.WriteAsync(0, new byte[2 * Block]);
        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await disk.WriteAsync(10 * Block, new byte[Block]));
        Assert.Equal(BlockErrno.ENOSPC, ex.Errno);

        Assert.Equal(2L * Block, dbg.Statistics.Bytes(BlockOperation.Write));
        Assert.Equal(1, dbg.Statistics.Operations(BlockOperation.Write));
        Assert.Equal(1, dbg.Statistics.Failed(BlockOperation.Write));
        // A failed write moves the highest offset too (QEMU's rule), on the node it failed on.
        Assert.Equal(11L * Block, dbg.Statistics.WriteHighestOffset);

        // The memory node under blkdebug saw the first write only: the failure was injected above it.
        Assert.Equal(2L * Block, memory.Statistics.Bytes(BlockOperation.Write));
        Assert.Equal(1, memory.Statistics.Operations(BlockOperation.Write));
        Assert.Equal(0, memory.Statistics.Failed(BlockOperation.Write));
        Assert.Equal(2L * Block, memory.Statistics.WriteHighestOffset);
    }

    [Fact]
    public async Task Requests_refused_by_validation_count_as_invalid_and_nothing_else()
    {
        await using var graph = new BlockGraph();
        var node = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(16 * Block));
        var readOnly = await MemoryDriver.OpenAsync(graph, "ro", new MemoryDriverOptions(16 * Block), readOnly: true);

        await Assert.ThrowsAsync<BlockIOException>(async () => await node.ReadAsync(15 * Block, new byte[2 * Block]));
        await Assert.ThrowsAsync<BlockIOException>(async () => await node.WriteZeroesAsync(-1, Block));
        await Assert.ThrowsAsync<BlockIOException>(async () => await node.DiscardAsync(16 * Block, Block));
        await Assert.ThrowsAsync<BlockIOException>(async () => await readOnly.WriteAsync(0, new byte[Block]));

        Assert.Equal(1, node.Statistics.Invalid(BlockOperation.Read));
        Assert.Equal(1, node.Statistics.Invalid(BlockOperation.WriteZeroes));
        Assert.Equal(1, node.Statistics.Invalid(BlockOperation.Discard));
        Assert.Equal(1, readOnly.Statistics.Invalid(BlockOperation.Write));
        foreach (var n in new[] { node, readOnly })
        {
            for (var kind = BlockOperation.Read; kind <= BlockOperation.Flush; kind++)
            {
                Assert.Equal(0, n.Statistics.Operations(kind));
                Assert.Equal(0, n.Statistics.Failed(kind));
                Assert.Equal(0, n.Statistics.Bytes(kind));
            }

            Assert.Equal(0, n.Statistics.WriteHighestOffset);
            // A refused request is still an access (QEMU with account_invalid on).
            Assert.NotNull(n.Statistics.IdleTime);
        }
    }
}
