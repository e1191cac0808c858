using System.Text.Json;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// The qcow2 driver raises QEMU's metadata events on its file, so rules can aim at one metadata write:
/// qcow2 'img' -> blkdebug 'dbg' -> file, a new 1 MiB image.
/// </summary>
public sealed class BlkdebugQcow2EventTests : IDisposable
{
    readonly TempDirectory _dir = new("bm-blkdebug-qcow2-");

    public void Dispose() => _dir.Dispose();

    async Task<(BlockGraph Graph, NodeEdge Guest, BlkdebugFilter Blkdebug)> OpenAsync(string rules, bool create = true)
    {
        var path = _dir.File("image.qcow2");
        if (create)
        {
            Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 1 << 20 });
        }

        var graph = new BlockGraph();
        var file = $$"""{"driver": "file", "filename": {{JsonSerializer.Serialize(path)}}}""";
        using var document = JsonDocument.Parse($$"""
            {"driver": "qcow2", "node-name": "img", "file": {"driver": "blkdebug", "node-name": "dbg", {{rules}}, "image": {{file}} } }
            """);
        var node = await DriverRegistry.OpenAsync(graph, new OptionReader(document.RootElement), OpenRules.BlockdevAdd);
        return (graph, graph.AttachRoot(node, new RootParent("guest")), (BlkdebugFilter)graph.FindNode("dbg")!.Driver);
    }

    [Fact]
    public async Task A_rule_armed_by_l1_update_fails_the_l1_write_of_the_first_allocating_write()
    {
        var (graph, guest, blkdebug) = await OpenAsync("""
            "inject-error": [{"event": "l1_update", "errno": 28, "iotype": "write", "once": true, "immediately": true}]
            """);
        await using var _ = graph;

        var failed = await Assert.ThrowsAsync<BlockIOException>(async () => await guest.WriteAsync(0, new byte[65536]));

        Assert.Equal(BlockErrno.ENOSPC, failed.Errno);
        Assert.Equal(1, blkdebug.InjectedCount);
    }

    [Fact]
    public async Task A_read_of_allocated_data_raises_l2_load_then_read_aio()
    {
        var (writer, written, _) = await OpenAsync("\"align\": 512");
        await written.WriteAsync(0, new byte[65536]);
        await writer.DisposeAsync();
        var (graph, guest, blkdebug) = await OpenAsync("""
            "set-state": [{"event": "l2_load", "state": 1, "new_state": 2}, {"event": "read_aio", "state": 2, "new_state": 3}]
            """, create: false);
        await using var _ = graph;

        await guest.ReadAsync(0, new byte[4096]);

        Assert.Equal(3, blkdebug.State);
    }
}
