using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Graph;

public sealed class GraphTests
{
    [Theory]
    [InlineData("", "Invalid node-name: ''")]
    [InlineData("1disk", "Invalid node-name: '1disk'")]
    [InlineData("disk#1", "Invalid node-name: 'disk#1'")]
    [InlineData("a234567890123456789012345678901x", "Node name too long")]
    public async Task Bad_node_names_are_refused_and_nothing_is_added(string name, string message)
    {
        await using var graph = new BlockGraph();
        var ex = await Assert.ThrowsAsync<BlockGraphException>(async () => await MemoryDriver.OpenAsync(graph, name, new MemoryDriverOptions(512)));
        Assert.Contains(message, ex.Message);
        Assert.Empty(graph.Nodes);
    }

    [Fact]
    public async Task Duplicate_node_names_are_refused()
    {
        await using var graph = new BlockGraph();
        await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(512));
        var ex = await Assert.ThrowsAsync<BlockGraphException>(async () => await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(512)));
        Assert.Equal("Duplicate nodes with node-name='disk'", ex.Message);
        Assert.Single(graph.Nodes);
    }

    [Fact]
    public async Task Unnamed_nodes_get_generated_names_that_cannot_clash_with_user_names()
    {
        await using var graph = new BlockGraph();
        var a = await MemoryDriver.OpenAsync(graph, null, new MemoryDriverOptions(512));
        var b = await MemoryDriver.OpenAsync(graph, null, new MemoryDriverOptions(512));
        Assert.StartsWith("#block", a.Name);
        Assert.NotEqual(a.Name, b.Name);
        Assert.NotNull(BlockGraph.ValidateNodeName(a.Name));
    }

    [Fact]
    public async Task A_child_that_would_close_a_loop_is_refused()
    {
        await using var graph = new BlockGraph();
        var bottom = await MemoryDriver.OpenAsync(graph, "bottom", new MemoryDriverOptions(4096));
        var top = await GateFilter.OpenAsync(graph, "top", bottom, startOpen: true);
        var ex = Assert.Throws<BlockGraphException>(() => bottom.AttachChild("backing", top));
        Assert.Contains("loop", ex.Message);
        Assert.Empty(bottom.Children);
    }

    [Fact]
    public async Task A_node_in_use_cannot_be_removed()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(4096));
        graph.AttachRoot(disk, new RootParent("export 'exp0'"));
        var ex = await Assert.ThrowsAsync<BlockGraphException>(async () => await graph.RemoveNodeAsync(disk));
        Assert.Equal(GraphErrorKind.InUse, ex.Kind);
        Assert.Contains("export 'exp0'", ex.Message);
        Assert.Same(disk, graph.FindNode("disk"));
    }

    [Fact]
    public async Task Removing_a_node_removes_its_implicit_children()
    {
        await using var graph = new BlockGraph();
        var file = await MemoryDriver.OpenAsync(graph, null, new MemoryDriverOptions(4096));
        var raw = await RawDriver.OpenAsync(graph, "disk", file);
        Assert.Equal(2, graph.Nodes.Count);
        await graph.RemoveNodeAsync(raw);
        Assert.Empty(graph.Nodes);
    }

    [Fact]
    public async Task A_failed_open_leaves_nothing_behind()
    {
        await using var graph = new BlockGraph();
        var file = await MemoryDriver.OpenAsync(graph, "file", new MemoryDriverOptions(4096));
        await Assert.ThrowsAsync<BlockOpenException>(async () => await RawDriver.OpenAsync(graph, "disk", file, new RawDriverOptions(Offset: 0, Size: 8192)));
        Assert.Null(graph.FindNode("disk"));
        Assert.Empty(file.Parents);

        // The name is free again.
        var raw = await RawDriver.OpenAsync(graph, "disk", file);
        Assert.Same(raw, graph.FindNode("disk"));
    }

    [Fact]
    public async Task Replacing_a_node_moves_every_parent_except_the_replacement_itself()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(4096));
        var vm = graph.AttachRoot(disk, new RootParent("vm"));
        var export = graph.AttachRoot(disk, new RootParent("export"));
        var filter = await GateFilter.OpenAsync(graph, "filter", disk, startOpen: true);

        using (await graph.DrainAsync(disk))
        {
            graph.ReplaceNode(disk, filter);
        }

        Assert.Same(filter, vm.Node);
        Assert.Same(filter, export.Node);
        Assert.Same(disk, filter.FilteredChild!.Node);
        Assert.Single(disk.Parents);
    }

    [Fact]
    public async Task Disposing_the_graph_closes_parents_before_children()
    {
        var graph = new BlockGraph();
        var file = await MemoryDriver.OpenAsync(graph, "file", new MemoryDriverOptions(4096));
        await RawDriver.OpenAsync(graph, "disk", file);
        await graph.DisposeAsync();
        Assert.Empty(graph.Nodes);
    }
}
