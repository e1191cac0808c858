using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Graph;

/// <summary>
/// A read into a pipe (<see cref="BlockNode.SpliceReadAsync"/>): from a raw file the file's pages go in as they
/// are; where they cannot (O_DIRECT and unaligned, a driver that is not a plain file) the node reads into a buffer
/// and copies it in. Either way the pipe holds the bytes a read gives, and the read is accounted as one.
/// </summary>
public sealed class SpliceReadTests : IDisposable
{
    const int Size = 4 << 20;

    readonly TempDirectory _dir = new("blockmirror-splice-");

    public void Dispose() => _dir.Dispose();

    [Theory]
    [InlineData(false, 0, 4096, true)]
    [InlineData(false, 1000, 300_001, true)]
    [InlineData(false, Size - 10, 10, true)]
    [InlineData(true, 8192, 65536, true)]
    [InlineData(true, 1000, 5000, false)]
    public async Task A_raw_file_read_into_a_pipe_holds_the_files_bytes(bool direct, int offset, int length, bool spliced)
    {
        var content = new byte[Size];
        new Random(offset + length).NextBytes(content);
        var path = _dir.File("disk.raw");
        await File.WriteAllBytesAsync(path, content);
        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "raw", ReadOnly: true, Direct: direct));

        Assert.Equal(spliced, node.CanSpliceRead(offset, length));
        var data = await ReadThroughPipeAsync(node, offset, length);

        Assert.True(content.AsSpan(offset, length).SequenceEqual(data), "the pipe's bytes differ from the file's");
        Assert.Equal(length, node.Statistics.Bytes(BlockOperation.Read));
        Assert.Equal(1, node.Statistics.Operations(BlockOperation.Read));
    }

    [Fact]
    public async Task A_node_that_cannot_splice_copies_its_read_into_the_pipe()
    {
        await using var graph = new BlockGraph();
        var node = await MemoryDriver.OpenAsync(graph, "mem", new MemoryDriverOptions(Size, ZeroInit: true));
        var data = new byte[200_000];
        new Random(3).NextBytes(data);
        await node.WriteAsync(12_345, data);

        Assert.False(node.CanSpliceRead(12_345, data.Length));
        Assert.Equal(data, await ReadThroughPipeAsync(node, 12_345, data.Length));
    }

    [Fact]
    public async Task A_read_past_the_end_is_refused_and_leaves_the_pipe_empty()
    {
        var path = _dir.File("small.raw");
        await File.WriteAllBytesAsync(path, new byte[8192]);
        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "raw", ReadOnly: true));
        using var pipe = SplicePipe.TryCreate()!;
        Assert.True(pipe.TryReserve(4096, 8192));

        var error = await Assert.ThrowsAsync<BlockIOException>(async () => await node.SpliceReadAsync(4096, 8192, pipe));
        Assert.Equal(BlockErrno.EINVAL, error.Errno);
        Assert.Equal(0, pipe.Length);
    }

    [Fact]
    public void A_pipe_grows_to_what_is_reserved_and_no_further_than_its_limit()
    {
        using var pipe = SplicePipe.TryCreate()!;
        Assert.True(pipe.TryReserve(100, 500_000));
        Assert.True(pipe.Capacity >= 500_000);
        Assert.False(pipe.TryReserve(0, SplicePipe.MaxCapacity));

        using var small = SplicePipe.TryCreate()!;
        Assert.False(small.TryReserve(0, 200_000, limit: 100_000));
        Assert.True(small.Capacity < 200_000);
    }

    [Fact]
    public void Pipes_stop_at_the_process_budget_and_come_back_when_closed()
    {
        // Only this class opens pipes in this test assembly, and its tests run one at a time.
        var pipes = new List<SplicePipe>();
        try
        {
            while (SplicePipe.TryCreate() is { } pipe)
            {
                pipes.Add(pipe);
                Assert.True(pipes.Count <= SplicePipe.MaxOpen, $"more than {SplicePipe.MaxOpen} pipes open");
            }

            Assert.Equal(SplicePipe.MaxOpen, pipes.Count);
        }
        finally
        {
            pipes.ForEach(p => p.Dispose());
        }

        using var again = SplicePipe.TryCreate();
        Assert.NotNull(again);
    }

    [Fact]
    public void An_empty_pipe_released_serves_the_next_reader_and_one_holding_data_is_closed()
    {
        SplicePipe.CloseIdle();
        var open = SplicePipe.OpenCount;
        try
        {
            var first = SplicePipe.Rent()!;
            first.Release();
            Assert.Equal(1, SplicePipe.IdleCount);
            var again = SplicePipe.Rent()!;
            Assert.Same(first, again);
            Assert.Equal(0, SplicePipe.IdleCount);

            // Bytes left in a pipe must never reach another reader's reply: it is closed, not pooled.
            Assert.True(again.TryReserve(0, 100));
            again.Write(new byte[100]);
            again.Release();
            Assert.Equal(0, SplicePipe.IdleCount);
            Assert.Equal(open, SplicePipe.OpenCount);

            var fresh = SplicePipe.Rent()!;
            Assert.NotSame(first, fresh);
            Assert.Equal(0, fresh.Length);
            fresh.Release();
            Assert.Equal(open + 1, SplicePipe.OpenCount);
        }
        finally
        {
            SplicePipe.CloseIdle();
        }

        Assert.Equal(open, SplicePipe.OpenCount);
    }

    static async Task<byte[]> ReadThroughPipeAsync(BlockNode node, long offset, int length)
    {
        using var pipe = SplicePipe.TryCreate()!;
        Assert.True(pipe.TryReserve(offset, length));
        await node.SpliceReadAsync(offset, length, pipe);
        Assert.Equal(length, pipe.Length);
        var data = new byte[length];
        for (var taken = 0; taken < length;)
        {
            taken += pipe.ReadInto(data.AsSpan(taken));
        }

        Assert.Equal(0, pipe.Length);
        return data;
    }
}
