using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>The raw format: a window (offset, size) of its file child.</summary>
public sealed class RawDriverTests : IDisposable
{
    const int K = 1024;
    const long FileSize = 1 << 20;
    const long WindowOffset = 64 * K;
    const long WindowSize = 256 * K;

    readonly TempDirectory _dir = new();
    readonly string _path;
    readonly byte[] _original;

    public RawDriverTests()
    {
        _path = _dir.File("disk.img");
        _original = new byte[FileSize];
        new Random(7).NextBytes(_original);
        System.IO.File.WriteAllBytes(_path, _original);
    }

    public void Dispose() => _dir.Dispose();

    async Task<(BlockGraph Graph, BlockNode File)> OpenFileAsync(bool direct = false)
    {
        var graph = new BlockGraph();
        var file = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(_path, Direct: direct));
        return (graph, file);
    }

    [Fact]
    public async Task Window_reads_and_writes_land_at_the_window_offset_in_the_file()
    {
        var (graph, file) = await OpenFileAsync();
        await using var _ = graph;
        var raw = await RawDriver.OpenAsync(graph, "disk", file, new RawDriverOptions(WindowOffset, WindowSize));
        var disk = graph.AttachRoot(raw, new RootParent("test"));
        Assert.Equal(WindowSize, raw.Length);

        var read = new byte[WindowSize];
        await disk.ReadAsync(0, read);
        Assert.Equal(_original[(int)WindowOffset..(int)(WindowOffset + WindowSize)], read);

        var data = new byte[5000];
        new Random(8).NextBytes(data);
        await disk.WriteAsync(1000, data);
        await disk.WriteVectorAsync(WindowSize - 300, [data.AsMemory(0, 100), data.AsMemory(100, 200)]);
        await disk.WriteZeroesAsync(20 * K, 3 * K);

        var expected = (byte[])_original.Clone();
        data.CopyTo(expected, WindowOffset + 1000);
        data.AsSpan(0, 300).CopyTo(expected.AsSpan((int)(WindowOffset + WindowSize - 300)));
        expected.AsSpan((int)(WindowOffset + 20 * K), 3 * K).Clear();
        Assert.Equal(expected, System.IO.File.ReadAllBytes(_path));

        // The window ends where it says: one byte more is refused by the raw node, and nothing is written.
        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await disk.WriteAsync(WindowSize - 10, new byte[11]));
        Assert.Equal(BlockErrno.EINVAL, ex.Errno);
        Assert.Equal("disk", ex.NodeName);
        Assert.Equal(expected, System.IO.File.ReadAllBytes(_path));
    }

    [Fact]
    public async Task Window_without_size_runs_to_the_end_of_the_file()
    {
        var (graph, file) = await OpenFileAsync();
        await using var _ = graph;
        var raw = await RawDriver.OpenAsync(graph, "disk", file, new RawDriverOptions(Offset: WindowOffset));
        Assert.Equal(FileSize - WindowOffset, raw.Length);
        var tail = new byte[4 * K];
        await raw.ReadAsync(raw.Length - tail.Length, tail);
        Assert.Equal(_original[^tail.Length..], tail);
    }

    [SkippableFact]
    public async Task Block_status_host_offset_is_the_window_offset_plus_the_offset()
    {
        await PunchHoleSupport.SkipUnlessAvailableAsync();
        FileDriver.CreateFile(_path, FileSize, overwrite: true);
        var (graph, file) = await OpenFileAsync();
        await using var _ = graph;
        await file.WriteAsync(WindowOffset + 8 * K, new byte[8 * K].Select(_ => (byte)1).ToArray());
        var raw = await RawDriver.OpenAsync(graph, "disk", file, new RawDriverOptions(WindowOffset, WindowSize));

        var flags = BlockStatusFlags.Allocated | BlockStatusFlags.OffsetValid;
        Assert.Equal(new BlockStatus(flags | BlockStatusFlags.Zero, 8 * K, WindowOffset), await raw.GetBlockStatusAsync(0, WindowSize));
        Assert.Equal(new BlockStatus(flags | BlockStatusFlags.Data, 8 * K, WindowOffset + 8 * K), await raw.GetBlockStatusAsync(8 * K, WindowSize - 8 * K));
        Assert.Equal(new BlockStatus(flags | BlockStatusFlags.Data, 4 * K, WindowOffset + 12 * K), await raw.GetBlockStatusAsync(12 * K, WindowSize - 12 * K));

        // The last run stops at the window end although the file's hole goes on.
        Assert.Equal(new BlockStatus(flags | BlockStatusFlags.Zero, WindowSize - 16 * K, WindowOffset + 16 * K), await raw.GetBlockStatusAsync(16 * K, FileSize));
    }

    /// <summary>In QEMU 7.2's words (raw_apply_options), checked in its order; the negative values are refused by
    /// QEMU's option parser before the driver sees them.</summary>
    [Theory]
    [InlineData(FileSize + 4096, null, "Offset (1052672) cannot be greater than size of the containing file (1048576)")]
    [InlineData(512L * K, 512L * K + 512, "The sum of offset (524288) and size (524800) has to be smaller or equal to the  actual size of the containing file (1048576)")]
    [InlineData(0, FileSize + 1, "The sum of offset (0) and size (1048577) has to be smaller or equal to the  actual size of the containing file (1048576)")]
    [InlineData(0, 1000L, "Specified size is not multiple of 512")]
    [InlineData(4096, 4096L + 1, "Specified size is not multiple of 512")]
    [InlineData(-4096, null, "raw: offset and size must not be negative (offset -4096, size )")]
    [InlineData(0L, -1L, "raw: offset and size must not be negative (offset 0, size -1)")]
    public async Task A_window_outside_the_file_is_refused_and_leaves_no_node(long offset, long? size, string message)
    {
        var (graph, file) = await OpenFileAsync();
        await using var _ = graph;
        var ex = await Assert.ThrowsAsync<BlockOpenException>(async () => await RawDriver.OpenAsync(graph, "disk", file, new RawDriverOptions(offset, size)));
        Assert.Equal(message, ex.Message);
        Assert.Null(graph.FindNode("disk"));
        Assert.Empty(file.Parents);
        Assert.Equal([file], graph.Nodes);
    }

    [Theory]
    [InlineData(512, null)]
    [InlineData(0L, 4096L + 512)]
    public async Task A_window_unaligned_to_the_file_alignment_is_refused_and_leaves_no_node(long offset, long? size)
    {
        var (graph, file) = await OpenFileAsync(direct: true);
        await using var _ = graph;
        Assert.Equal(FileDriver.DirectAlignment, file.Limits.RequestAlignment);
        var ex = await Assert.ThrowsAsync<BlockOpenException>(async () => await RawDriver.OpenAsync(graph, "disk", file, new RawDriverOptions(offset, size)));
        Assert.Contains("request alignment (4096 bytes)", ex.Message);
        Assert.Null(graph.FindNode("disk"));
        Assert.Empty(file.Parents);

        // The same window on a byte-granular file is fine.
        var (graph2, buffered) = await OpenFileAsync();
        await using var _2 = graph2;
        var raw = await RawDriver.OpenAsync(graph2, "disk", buffered, new RawDriverOptions(offset, size));
        Assert.Equal(size ?? FileSize - offset, raw.Length);
    }

    [Fact]
    public async Task Truncate_passes_to_the_file_without_a_window()
    {
        var (graph, file) = await OpenFileAsync();
        await using var _ = graph;
        var raw = await RawDriver.OpenAsync(graph, "disk", file);
        Assert.True(raw.Capabilities.CanTruncate);
        Assert.True(raw.Capabilities.ZeroInit);
        var disk = graph.AttachRoot(raw, new RootParent("test"));

        await disk.TruncateAsync(2 * FileSize);
        Assert.Equal(2 * FileSize, raw.Length);
        Assert.Equal(2 * FileSize, file.Length);
        Assert.Equal(2 * FileSize, new FileInfo(_path).Length);
    }

    [Theory]
    [InlineData(4096, null)]
    [InlineData(0, FileSize)]
    public async Task Truncate_with_a_window_is_refused_by_the_raw_node(long offset, long? size)
    {
        var (graph, file) = await OpenFileAsync();
        await using var _ = graph;
        var raw = await RawDriver.OpenAsync(graph, "disk", file, new RawDriverOptions(offset, size));
        Assert.False(raw.Capabilities.CanTruncate);
        Assert.False(raw.Capabilities.ZeroInit);
        var disk = graph.AttachRoot(raw, new RootParent("test"));

        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await disk.TruncateAsync(2 * FileSize));
        Assert.Equal(BlockErrno.ENOTSUP, ex.Errno);
        Assert.Equal("disk", ex.NodeName);
        Assert.Equal(BlockOperation.Truncate, ex.Operation);
        Assert.Equal(FileSize, new FileInfo(_path).Length);
    }
}
