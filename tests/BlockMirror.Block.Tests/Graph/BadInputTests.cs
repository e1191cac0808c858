using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Graph;

/// <summary>Every bad request is refused with an error that names the node, the operation and the range, and changes nothing.</summary>
public sealed class BadInputTests : IDisposable
{
    const long Size = 1 << 20;
    readonly TempDirectory _dir = new();
    readonly string _path;
    readonly byte[] _original;

    public BadInputTests()
    {
        _path = _dir.File("disk.raw");
        _original = new byte[Size];
        new Random(1).NextBytes(_original);
        System.IO.File.WriteAllBytes(_path, _original);
    }

    public void Dispose() => _dir.Dispose();

    void AssertUnchanged() => Assert.True(System.IO.File.ReadAllBytes(_path).AsSpan().SequenceEqual(_original), "the file must not change");

    async Task<(BlockGraph, NodeEdge)> OpenAsync(bool readOnly = false, bool direct = false)
    {
        var graph = new BlockGraph();
        var node = await FileDriver.OpenAsync(graph, "disk", new FileDriverOptions(_path, Direct: direct), readOnly);
        return (graph, graph.AttachRoot(node, new RootParent("test")));
    }

    [Fact]
    public async Task A_read_past_the_end_is_EINVAL_with_node_operation_and_range()
    {
        var (graph, disk) = await OpenAsync();
        await using var _ = graph;
        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await disk.ReadAsync(Size - 512, new byte[1024]));
        Assert.Equal(BlockErrno.EINVAL, ex.Errno);
        Assert.Equal("disk", ex.NodeName);
        Assert.Equal(BlockOperation.Read, ex.Operation);
        Assert.Equal(
            $"node 'disk': read at offset {Size - 512} length 1024: request runs past the end of the device ({Size} bytes)",
            ex.Message);
    }

    [Fact]
    public async Task A_write_past_the_end_writes_nothing()
    {
        var (graph, disk) = await OpenAsync();
        await using (graph)
        {
            var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await disk.WriteAsync(Size - 1, new byte[2]));
            Assert.Equal(BlockErrno.EINVAL, ex.Errno);
            Assert.Equal(Size, disk.Node.Length);
        }

        AssertUnchanged();
        Assert.Equal(Size, new FileInfo(_path).Length);
    }

    [Theory]
    [InlineData(BlockOperation.WriteZeroes)]
    [InlineData(BlockOperation.Discard)]
    public async Task A_negative_length_is_refused(BlockOperation operation)
    {
        var (graph, disk) = await OpenAsync();
        await using (graph)
        {
            var ex = await Assert.ThrowsAsync<BlockIOException>(async () =>
            {
                if (operation == BlockOperation.WriteZeroes)
                {
                    await disk.WriteZeroesAsync(0, -4096);
                }
                else
                {
                    await disk.DiscardAsync(0, -4096);
                }
            });
            Assert.Equal(BlockErrno.EINVAL, ex.Errno);
            Assert.Equal(operation, ex.Operation);
            Assert.Contains("negative offset or length", ex.Message);
            Assert.Contains("length -4096", ex.Message);
        }

        AssertUnchanged();
    }

    [Fact]
    public async Task A_negative_offset_is_refused()
    {
        var (graph, disk) = await OpenAsync();
        await using var _ = graph;
        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await disk.ReadAsync(-1, new byte[1]));
        Assert.Equal(BlockErrno.EINVAL, ex.Errno);
        Assert.Contains("offset -1", ex.Message);
    }

    [Fact]
    public async Task A_file_that_does_not_exist_is_a_clear_open_error_and_adds_no_node()
    {
        await using var graph = new BlockGraph();
        var missing = _dir.File("missing.raw");
        var ex = await Assert.ThrowsAsync<BlockOpenException>(async () => await FileDriver.OpenAsync(graph, "disk", new FileDriverOptions(missing)));
        Assert.Equal($"Could not open '{missing}': No such file or directory", ex.Message);
        Assert.Equal(BlockErrno.ENOENT, ex.Errno);
        Assert.Empty(graph.Nodes);
        Assert.False(System.IO.File.Exists(missing));
    }

    [Fact]
    public async Task A_directory_is_not_a_disk()
    {
        await using var graph = new BlockGraph();
        var ex = await Assert.ThrowsAsync<BlockOpenException>(async () => await FileDriver.OpenAsync(graph, "disk", new FileDriverOptions(_dir.Path)));
        Assert.Contains("Is a directory", ex.Message);
    }

    [Fact]
    public async Task An_unknown_aio_mode_is_refused()
    {
        await using var graph = new BlockGraph();
        var ex = await Assert.ThrowsAsync<BlockOpenException>(async () => await FileDriver.OpenAsync(graph, "disk", new FileDriverOptions(_path, Aio: "posix")));
        Assert.Contains("'aio'", ex.Message);
        Assert.Contains("posix", ex.Message);
    }

    [Theory]
    [InlineData(BlockOperation.Write)]
    [InlineData(BlockOperation.WriteZeroes)]
    [InlineData(BlockOperation.Discard)]
    [InlineData(BlockOperation.Truncate)]
    public async Task A_read_only_node_refuses_every_change_with_EPERM(BlockOperation operation)
    {
        var (graph, disk) = await OpenAsync(readOnly: true);
        await using (graph)
        {
            var ex = await Assert.ThrowsAsync<BlockIOException>(async () =>
            {
                switch (operation)
                {
                    case BlockOperation.Write: await disk.WriteAsync(4096, new byte[4096]); break;
                    case BlockOperation.WriteZeroes: await disk.WriteZeroesAsync(4096, 4096); break;
                    case BlockOperation.Discard: await disk.DiscardAsync(4096, 4096); break;
                    default: await disk.TruncateAsync(4096); break;
                }
            });
            Assert.Equal(BlockErrno.EPERM, ex.Errno);
            Assert.Equal(operation, ex.Operation);
            Assert.StartsWith($"node 'disk': {operation.ToWireName()} at offset", ex.Message);
            Assert.EndsWith("node is read-only", ex.Message);

            // Reads still work.
            var buffer = new byte[16];
            await disk.ReadAsync(0, buffer);
            Assert.Equal(_original.AsSpan(0, 16).ToArray(), buffer);
        }

        AssertUnchanged();
        Assert.Equal(Size, new FileInfo(_path).Length);
    }

    [Fact]
    public async Task Refused_requests_do_not_mark_dirty_bitmaps()
    {
        var (graph, disk) = await OpenAsync(readOnly: true);
        await using var _ = graph;
        var bitmap = disk.Node.CreateDirtyBitmap(4096);
        await Assert.ThrowsAsync<BlockIOException>(async () => await disk.WriteAsync(0, new byte[4096]));
        Assert.Equal(0, bitmap.DirtyBytes);
    }
}
