using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Interop.Tests;

/// <summary>The raw-over-file stack against the real qemu-io and qemu-img, in both directions.</summary>
public sealed class RawFileInteropTests : IDisposable
{
    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    static async Task<(BlockGraph, NodeEdge)> OpenRawAsync(string path)
    {
        var graph = new BlockGraph();
        var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path, Discard: FileDiscardMode.Unmap));
        var raw = await RawDriver.OpenAsync(graph, "disk", file);
        return (graph, graph.AttachRoot(raw, new RootParent("test")));
    }

    [SkippableFact]
    public async Task Patterns_written_by_qemu_io_read_back_identically()
    {
        var path = _dir.File("a.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", path, "4M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw",
            "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 4k", "-c", "write -P 0x33 3M 512", path);

        var (graph, disk) = await OpenRawAsync(path);
        await using var _ = graph;
        var buffer = new byte[4 << 20];
        await disk.ReadAsync(0, buffer);
        Assert.All(buffer.AsSpan(0, 65536).ToArray(), b => Assert.Equal(0x11, b));
        Assert.All(buffer.AsSpan(1 << 20, 4096).ToArray(), b => Assert.Equal(0x22, b));
        Assert.All(buffer.AsSpan(3 << 20, 512).ToArray(), b => Assert.Equal(0x33, b));
        Assert.Equal(65536 + 4096 + 512, buffer.Count(b => b != 0));
    }

    [SkippableFact]
    public async Task Writes_and_zeroes_from_blockmirror_pass_qemu_io_pattern_checks()
    {
        var path = _dir.File("b.raw");
        FileDriver.CreateFile(path, 4 << 20);
        var (graph, disk) = await OpenRawAsync(path);
        await using (graph)
        {
            await disk.WriteAsync(8192, Enumerable.Repeat((byte)0x5a, 8192).ToArray());
            await disk.WriteAsync(2 << 20, Enumerable.Repeat((byte)0x77, 65536).ToArray());
            await disk.WriteZeroesAsync(2 << 20, 4096, RequestFlags.MayUnmap);
            await disk.FlushAsync();
        }

        var output = await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw",
            "-c", "read -P 0x5a 8k 8k", "-c", "read -P 0 2M 4k", "-c", "read -P 0x77 2052k 60k", "-c", "read -P 0 0 8k", path);
        Assert.DoesNotContain("Pattern verification failed", output);
    }

    [SkippableFact]
    public async Task Holes_punched_by_blockmirror_show_as_zero_in_qemu_img_map()
    {
        var path = _dir.File("c.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", path, "2M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "write -P 0x44 0 2M", path);
        var (graph, disk) = await OpenRawAsync(path);
        await using (graph)
        {
            await disk.DiscardAsync(1 << 20, 1 << 20);
            var status = await disk.GetBlockStatusAsync(1 << 20, 1 << 20);
            Assert.True(status.IsZero);
            Assert.False(status.IsData);
        }

        var map = await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", "raw", path);
        Assert.Contains("\"start\": 1048576, \"length\": 1048576, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false", map);
    }
}
