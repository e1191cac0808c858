using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Graph;

public sealed class DrainTests
{
    static readonly TimeSpan Brief = TimeSpan.FromMilliseconds(100);

    static async Task<(BlockGraph Graph, BlockNode Disk, GateFilter Gate, BlockNode GateNode)> GatedDiskAsync()
    {
        var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1 << 20));
        var gateNode = await GateFilter.OpenAsync(graph, "gate", disk);
        return (graph, disk, (GateFilter)gateNode.Driver, gateNode);
    }

    [Fact]
    public async Task Drained_section_waits_for_in_flight_requests()
    {
        var (graph, _, gate, gateNode) = await GatedDiskAsync();
        await using var _g = graph;
        var user = graph.AttachRoot(gateNode, new RootParent("test"));

        var write = user.WriteAsync(0, new byte[512]).AsTask();
        await gate.WaitArrivedAsync(1);

        var drain = graph.DrainAsync(gateNode).AsTask();
        await Task.Delay(Brief);
        Assert.False(drain.IsCompleted, "the drain must wait while a request is in flight");

        gate.Open();
        await write;
        using var section = await drain;
        Assert.Equal(0, gateNode.InFlight.Count);
    }

    [Fact]
    public async Task Drained_section_holds_new_requests_until_it_ends()
    {
        var (graph, _, gate, gateNode) = await GatedDiskAsync();
        await using var _g = graph;
        gate.Open();
        var user = graph.AttachRoot(gateNode, new RootParent("test"));

        var section = await graph.DrainAsync(gateNode);
        var write = user.WriteAsync(0, new byte[512]).AsTask();
        await Task.Delay(Brief);
        Assert.False(write.IsCompleted, "a root request must wait for the drained section to end");
        Assert.Equal(0, gate.Arrived);

        section.Dispose();
        await write.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(1, gate.Arrived);
    }

    [Fact]
    public async Task Drained_sections_nest()
    {
        var (graph, _, gate, gateNode) = await GatedDiskAsync();
        await using var _g = graph;
        gate.Open();
        var user = graph.AttachRoot(gateNode, new RootParent("test"));

        var outer = await graph.DrainAsync(gateNode);
        var inner = await graph.DrainAsync(gateNode);
        var read = user.ReadAsync(0, new byte[512]).AsTask();

        inner.Dispose();
        await Task.Delay(Brief);
        Assert.False(read.IsCompleted, "the outer section still holds requests");

        outer.Dispose();
        await read.WaitAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task Draining_a_child_holds_root_requests_sent_to_its_parents()
    {
        var (graph, disk, gate, gateNode) = await GatedDiskAsync();
        await using var _g = graph;
        gate.Open();
        var user = graph.AttachRoot(gateNode, new RootParent("test"));

        using (await graph.DrainAsync(disk))
        {
            Assert.True(gateNode.IsQuiesced);
            Assert.True(user.IsQuiesced);
        }

        Assert.False(gateNode.IsQuiesced);
        Assert.False(user.IsQuiesced);
    }

    [Fact]
    public async Task Child_requests_from_a_parent_in_flight_are_not_held_by_the_drain()
    {
        // The gate filter's request is in flight and must reach the drained disk below it, or the
        // drain would wait for itself.
        var (graph, disk, gate, gateNode) = await GatedDiskAsync();
        await using var _g = graph;
        var user = graph.AttachRoot(gateNode, new RootParent("test"));
        var write = user.WriteAsync(0, new byte[] { 1, 2, 3 }).AsTask();
        await gate.WaitArrivedAsync(1);

        var drain = graph.DrainAsync(disk).AsTask();
        gate.Open();
        await write.WaitAsync(TimeSpan.FromSeconds(5));
        using var section = await drain.WaitAsync(TimeSpan.FromSeconds(5));
        var check = new byte[3];
        await disk.ReadAsync(0, check);
        Assert.Equal(new byte[] { 1, 2, 3 }, check);
    }

    [Fact]
    public async Task A_node_replaced_inside_a_drained_section_receives_every_later_request()
    {
        await using var graph = new BlockGraph();
        var a = await MemoryDriver.OpenAsync(graph, "a", new MemoryDriverOptions(1 << 20));
        var b = await MemoryDriver.OpenAsync(graph, "b", new MemoryDriverOptions(1 << 20));
        var user = graph.AttachRoot(a, new RootParent("test"));

        Task heldWrite;
        using (await graph.DrainAsync(a))
        {
            // Sent while drained: held, and must land on the replacement, not on the old node.
            heldWrite = user.WriteAsync(0, new byte[] { 7 }).AsTask();
            graph.ReplaceNode(a, b);
            Assert.Same(b, user.Node);
        }

        await heldWrite.WaitAsync(TimeSpan.FromSeconds(5));
        await user.WriteAsync(1, new byte[] { 8 });

        var onA = new byte[2];
        var onB = new byte[2];
        await a.ReadAsync(0, onA);
        await b.ReadAsync(0, onB);
        Assert.Equal(new byte[] { 0, 0 }, onA);
        Assert.Equal(new byte[] { 7, 8 }, onB);
        Assert.Empty(a.Parents);
    }

    [Fact]
    public async Task A_root_attached_to_a_drained_node_waits_too()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(4096));
        var section = await graph.DrainAsync(disk);
        var late = graph.AttachRoot(disk, new RootParent("late"));
        var read = late.ReadAsync(0, new byte[16]).AsTask();
        await Task.Delay(Brief);
        Assert.False(read.IsCompleted);
        section.Dispose();
        await read.WaitAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task A_filter_inserted_inside_a_drained_section_stays_quiesced_until_it_ends()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(4096));
        var user = graph.AttachRoot(disk, new RootParent("vm"));

        BlockNode filter;
        using (await graph.DrainAsync(disk))
        {
            filter = await GateFilter.OpenAsync(graph, "filter", disk, startOpen: true);
            graph.ReplaceNode(disk, filter);
            Assert.Same(filter, user.Node);
            Assert.True(filter.IsQuiesced);
            Assert.True(user.IsQuiesced);
        }

        Assert.False(user.IsQuiesced);
        await user.WriteAsync(0, new byte[] { 9 });
        Assert.Equal(1, ((GateFilter)filter.Driver).Arrived);
    }
}
