using System.Text.Json;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Graph;

/// <summary>
/// detect-zeroes in the request path (QEMU's bdrv_aligned_pwritev): a write whose data is all zeroes reaches the
/// driver as a write-zeroes (may-unmap with unmap), any other write as a write; the node still counts it as a
/// write. And the discard rules around it, as QEMU 7.2's: a child given inline unmaps unless it says otherwise,
/// and a node opened with discard=ignore keeps discards from its children.
/// </summary>
public sealed class DetectZeroesTests : IDisposable
{
    const int Block = 4096;
    const long Size = 1 << 20;

    readonly TempDirectory _dir = new("blockmirror-detect-zeroes-");

    public void Dispose() => _dir.Dispose();

    async Task<(BlockNode Raw, BlockNode File, NodeEdge Disk)> OpenAsync(BlockGraph graph, string rawOptions)
    {
        var path = Path.Combine(_dir.Path, "disk.raw");
        await using (var stream = File.Create(path))
        {
            stream.SetLength(Size);
        }

        using var document = JsonDocument.Parse($$$"""
            {"driver": "raw", "node-name": "disk", {{{rawOptions}}} "file": {"driver": "file", "node-name": "proto", "filename": "{{{path}}}"}}
            """);
        var raw = await DriverRegistry.OpenAsync(graph, new OptionReader(document.RootElement), OpenRules.BlockdevAdd);
        return (raw, graph.FindNode("proto")!, graph.AttachRoot(raw, new RootParent("test")));
    }

    [Fact]
    public async Task Off_writes_zeroes_as_data()
    {
        await using var graph = new BlockGraph();
        var (raw, file, disk) = await OpenAsync(graph, "");

        await disk.WriteAsync(0, new byte[4 * Block]);

        Assert.Equal(DetectZeroesMode.Off, raw.DetectZeroes);
        Assert.Equal(1, file.Statistics.Operations(BlockOperation.Write));
        Assert.Equal(0, file.Statistics.Operations(BlockOperation.WriteZeroes));
    }

    [Fact]
    public async Task On_turns_an_all_zero_write_into_a_write_zeroes_and_leaves_data_alone()
    {
        await using var graph = new BlockGraph();
        var (raw, file, disk) = await OpenAsync(graph, """ "detect-zeroes": "on", """);

        await disk.WriteAsync(0, new byte[4 * Block]);
        await disk.WriteVectorAsync(8 * Block, [new byte[Block], new byte[100], new byte[Block - 100]]);
        // An unaligned one too: the node pads it like any write-zeroes.
        await disk.WriteAsync(20 * Block + 7, new byte[3 * Block]);
        Assert.Equal(0, file.Statistics.Operations(BlockOperation.Write));
        Assert.Equal(3, file.Statistics.Operations(BlockOperation.WriteZeroes));
        Assert.Equal(3, raw.Statistics.Operations(BlockOperation.Write));

        var data = new byte[2 * Block];
        data[^1] = 0x5a;
        await disk.WriteAsync(32 * Block, data);
        var lastSegment = new byte[Block];
        lastSegment[0] = 0x33;
        await disk.WriteVectorAsync(40 * Block, [new byte[Block], lastSegment]);

        Assert.Equal(2, file.Statistics.Operations(BlockOperation.Write));
        var back = new byte[2 * Block];
        await disk.ReadAsync(32 * Block, back);
        Assert.Equal(data, back);
        await disk.ReadAsync(40 * Block, back);
        Assert.Equal(0x33, back[Block]);
    }

    [Fact]
    public async Task Unmap_punches_the_zeroes_a_guest_writes_over_data()
    {
        await using var graph = new BlockGraph();
        var (raw, file, disk) = await OpenAsync(graph, """ "detect-zeroes": "unmap", "discard": "unmap", """);
        var data = new byte[64 * 1024];
        Array.Fill(data, (byte)0x5a);
        await disk.WriteAsync(256 * 1024, data);
        Assert.True((await file.GetBlockStatusAsync(256 * 1024, data.Length)).Flags.HasFlag(BlockStatusFlags.Data));

        await disk.WriteAsync(256 * 1024, new byte[data.Length]);

        Assert.Equal(DetectZeroesMode.Unmap, raw.DetectZeroes);
        var status = await file.GetBlockStatusAsync(256 * 1024, data.Length);
        Assert.False(status.Flags.HasFlag(BlockStatusFlags.Data), $"still data: {status}");
        Assert.True(status.Flags.HasFlag(BlockStatusFlags.Zero));
        await disk.ReadAsync(256 * 1024, data);
        Assert.All(data, b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task An_inline_child_unmaps_by_default_and_a_discard_ignore_parent_keeps_discards_from_it()
    {
        await using var graph = new BlockGraph();
        var (raw, file, disk) = await OpenAsync(graph, "");
        Assert.False(raw.DiscardUnmaps);
        Assert.True(file.DiscardUnmaps);
        Assert.False(raw.Capabilities.CanDiscard);

        await disk.DiscardAsync(0, 64 * 1024);

        Assert.Equal(1, raw.Statistics.Operations(BlockOperation.Discard));
        Assert.Equal(0, file.Statistics.Operations(BlockOperation.Discard));
    }

    [Fact]
    public async Task A_discard_unmap_parent_passes_discards_to_its_child()
    {
        await using var graph = new BlockGraph();
        var (raw, file, disk) = await OpenAsync(graph, """ "discard": "unmap", """);

        await disk.DiscardAsync(0, 64 * 1024);

        Assert.True(raw.Capabilities.CanDiscard);
        Assert.Equal(1, file.Statistics.Operations(BlockOperation.Discard));
    }
}
