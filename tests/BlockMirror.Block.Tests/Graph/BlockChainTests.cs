using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Graph;

public sealed class BlockChainTests
{
    const int C = OverlayDriver.ClusterSize;

    /// <summary>base (memory, 8 clusters, data in cluster 1) &lt;- mid (cluster 3) &lt;- top (cluster 5), top longer than base.</summary>
    static async Task<(BlockGraph, BlockNode Base, BlockNode Mid, BlockNode Top)> ChainAsync()
    {
        var graph = new BlockGraph();
        var @base = await MemoryDriver.OpenAsync(graph, "base", new MemoryDriverOptions(8 * C));
        await @base.WriteAsync(1 * C, new byte[C].Select(_ => (byte)1).ToArray());
        var mid = await OverlayDriver.OpenAsync(graph, "mid", 8 * C, @base);
        await mid.WriteAsync(3 * C, new byte[C].Select(_ => (byte)3).ToArray());
        var top = await OverlayDriver.OpenAsync(graph, "top", 12 * C, mid);
        await top.WriteAsync(5 * C, new byte[C].Select(_ => (byte)5).ToArray());
        return (graph, @base, mid, top);
    }

    [Fact]
    public async Task Is_allocated_above_sees_every_layer_above_the_base_and_none_below()
    {
        var (graph, @base, mid, top) = await ChainAsync();
        await using var _ = graph;

        Assert.Equal((true, C), await BlockChain.IsAllocatedAboveAsync(top, null, 5 * C, C));
        Assert.Equal((true, C), await BlockChain.IsAllocatedAboveAsync(top, @base, 3 * C, C));
        Assert.False((await BlockChain.IsAllocatedAboveAsync(top, mid, 3 * C, C)).Allocated);

        // The memory base decides all of its content itself (it has no backing).
        Assert.True((await BlockChain.IsAllocatedAboveAsync(top, null, 1 * C, C)).Allocated);
        Assert.False((await BlockChain.IsAllocatedAboveAsync(top, @base, 1 * C, C)).Allocated);
    }

    [Fact]
    public async Task Is_allocated_above_reports_how_far_the_answer_holds()
    {
        var (graph, @base, _, top) = await ChainAsync();
        await using var _g = graph;
        var (allocated, length) = await BlockChain.IsAllocatedAboveAsync(top, @base, 0, 3 * C);
        Assert.False(allocated);
        Assert.Equal(3 * C, length);
    }

    [Fact]
    public async Task Status_above_past_the_end_of_a_shorter_backing_reads_zero()
    {
        var (graph, _, _, top) = await ChainAsync();
        await using var _g = graph;
        var status = await BlockChain.GetBlockStatusAboveAsync(top, null, 9 * C, C);
        Assert.True(status.IsZero);
        Assert.False(status.IsData);

        var nodeStatus = await top.GetBlockStatusAsync(9 * C, 3 * C);
        Assert.Equal(BlockStatusFlags.Zero, nodeStatus.Flags);
        Assert.Equal(3 * C, nodeStatus.Length);
    }

    [Fact]
    public async Task Node_status_does_not_run_across_the_backing_end()
    {
        var (graph, _, _, top) = await ChainAsync();
        await using var _g = graph;
        var status = await top.GetBlockStatusAsync(6 * C, 6 * C);
        Assert.Equal(BlockStatusFlags.None, status.Flags);
        Assert.Equal(2 * C, status.Length);
    }

    [Fact]
    public async Task Reads_fall_through_the_chain()
    {
        var (graph, _, _, top) = await ChainAsync();
        await using var _g = graph;
        var buffer = new byte[12 * C];
        await top.ReadAsync(0, buffer);
        Assert.All(buffer.AsSpan(1 * C, C).ToArray(), b => Assert.Equal(1, b));
        Assert.All(buffer.AsSpan(3 * C, C).ToArray(), b => Assert.Equal(3, b));
        Assert.All(buffer.AsSpan(5 * C, C).ToArray(), b => Assert.Equal(5, b));
        Assert.Equal(3 * C, buffer.Count(b => b != 0));
    }

    [Fact]
    public async Task Status_above_a_base_is_unallocated_where_only_the_base_has_data()
    {
        var (graph, @base, _, top) = await ChainAsync();
        await using var _g = graph;
        var status = await BlockChain.GetBlockStatusAboveAsync(top, @base, 1 * C, C);
        Assert.Equal(BlockStatusFlags.None, status.Flags);
        var full = await BlockChain.GetBlockStatusAboveAsync(top, null, 1 * C, C);
        Assert.True(full.IsData && full.IsAllocated);
    }
}
