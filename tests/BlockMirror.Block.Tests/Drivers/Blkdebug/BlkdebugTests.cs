using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// blkdebug rules fire exactly where and when they say, and a failed request never reaches the child.
/// Stack: root edge -> blkdebug 'dbg' -> recorder 'rec' -> memory 'disk'.
/// </summary>
public sealed class BlkdebugTests
{
    const long Size = 1 << 20;
    const byte Old = 0x5A;

    sealed record Stack(BlockGraph Graph, NodeEdge Root, BlockNode Dbg, BlkdebugFilter Blkdebug, RecordingFilter Recorder, BlockNode Disk) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => Graph.DisposeAsync();
    }

    static async Task<Stack> OpenAsync(BlkdebugOptions? options = null)
    {
        var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(Size));
        await disk.WriteAsync(0, Enumerable.Repeat(Old, (int)Size).ToArray());
        var (rec, recorder) = await RecordingFilter.OpenAsync(graph, "rec", disk);
        var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", rec, options);
        return new Stack(graph, graph.AttachRoot(dbg, new RootParent("test")), dbg, (BlkdebugFilter)dbg.Driver, recorder, disk);
    }

    /// <summary>Every kind of request the root edge can send, with the operation blkdebug sees it as.</summary>
    public static TheoryData<string> RequestKinds() => [.. Requests.Keys];

    static readonly Dictionary<string, (BlockOperation Operation, Func<NodeEdge, Task> Send)> Requests = new()
    {
        ["read"] = (BlockOperation.Read, d => d.ReadAsync(0, new byte[4096]).AsTask()),
        ["read-vector"] = (BlockOperation.Read, d => d.ReadVectorAsync(0, [new byte[100], new byte[3996]]).AsTask()),
        ["write"] = (BlockOperation.Write, d => d.WriteAsync(0, new byte[4096]).AsTask()),
        ["write-vector"] = (BlockOperation.Write, d => d.WriteVectorAsync(0, [new byte[100], new byte[3996]]).AsTask()),
        ["write-zeroes"] = (BlockOperation.WriteZeroes, d => d.WriteZeroesAsync(0, 4096).AsTask()),
        ["discard"] = (BlockOperation.Discard, d => d.DiscardAsync(0, 4096).AsTask()),
        ["flush"] = (BlockOperation.Flush, d => d.FlushAsync().AsTask()),
        ["block-status"] = (BlockOperation.BlockStatus, d => d.GetBlockStatusAsync(0, 4096).AsTask()),
        ["truncate"] = (BlockOperation.Truncate, d => d.TruncateAsync(Size).AsTask()),
    };

    [Theory]
    [MemberData(nameof(RequestKinds))]
    public async Task A_rule_for_one_operation_fails_that_operation_only(string ruleFor)
    {
        await using var s = await OpenAsync();
        var operation = Requests[ruleFor].Operation;
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: operation));
        var expectedFailures = 0;
        foreach (var (name, (requestOperation, send)) in Requests)
        {
            var reachedBefore = s.Recorder.Count(requestOperation);
            if (requestOperation == operation)
            {
                var ex = await Assert.ThrowsAsync<BlockIOException>(() => send(s.Root));
                Assert.Equal(BlockErrno.EIO, ex.Errno);
                Assert.Equal("dbg", ex.NodeName);
                Assert.Equal(operation, ex.Operation);
                Assert.Equal(reachedBefore, s.Recorder.Count(requestOperation));
                expectedFailures++;
            }
            else
            {
                await send(s.Root);
                Assert.True(s.Recorder.Count(requestOperation) > reachedBefore, $"{name} must reach the child");
            }
        }

        Assert.Equal(expectedFailures, s.Blkdebug.InjectedCount);
    }

    [Fact]
    public async Task A_rule_without_operation_fails_every_operation()
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Errno: BlockErrno.ENOSPC));
        foreach (var (operation, send) in Requests.Values)
        {
            var ex = await Assert.ThrowsAsync<BlockIOException>(() => send(s.Root));
            Assert.Equal(BlockErrno.ENOSPC, ex.Errno);
            Assert.Equal(operation, ex.Operation);
        }

        Assert.Equal(Requests.Count, s.Blkdebug.InjectedCount);
        Assert.Equal(0, s.Recorder.Total);
    }

    [Theory]
    [InlineData(4096, 4096, false)]     // ends exactly at the rule start
    [InlineData(4097, 4096, true)]      // one byte of overlap at the start
    [InlineData(8191, 1, false)]        // the byte just before the rule
    [InlineData(8191, 2, true)]
    [InlineData(8192, 1, true)]
    [InlineData(9000, 10, true)]        // inside
    [InlineData(12287, 1, true)]        // the last byte of the rule
    [InlineData(12287, 4096, true)]
    [InlineData(12288, 4096, false)]    // starts exactly at the rule end
    [InlineData(0, 65536, true)]        // covers it
    public async Task A_rule_matches_requests_that_overlap_its_range_by_at_least_one_byte(long offset, int length, bool fails)
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Write, Offset: 8192, Length: 4096));
        var write = s.Root.WriteAsync(offset, new byte[length]).AsTask();
        if (fails)
        {
            var ex = await Assert.ThrowsAsync<BlockIOException>(() => write);
            Assert.Equal(offset, ex.Offset);
            Assert.Equal(length, ex.Length);
            Assert.Equal(0, s.Recorder.Count(BlockOperation.Write));
        }
        else
        {
            await write;
            Assert.Equal(1, s.Recorder.Count(BlockOperation.Write));
        }

        Assert.Equal(fails ? 1 : 0, s.Blkdebug.InjectedCount);
    }

    [Fact]
    public async Task A_rule_without_length_runs_to_the_end_of_the_device()
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Read, Offset: 8192));
        await s.Root.ReadAsync(0, new byte[8192]);
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.ReadAsync(Size - 1, new byte[1]));
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.ReadAsync(8191, new byte[2]));
        Assert.Equal(2, s.Blkdebug.InjectedCount);
    }

    [Fact]
    public async Task A_flush_rule_ignores_its_range()
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Flush, Offset: Size / 2, Length: 1));
        // A flush with nothing written since the last one is skipped before it reaches the filter.
        await s.Root.WriteAsync(0, new byte[512]);
        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.FlushAsync());
        Assert.Equal(BlockOperation.Flush, ex.Operation);
    }

    [Theory]
    [InlineData(BlockErrno.EIO)]
    [InlineData(BlockErrno.ENOSPC)]
    [InlineData(BlockErrno.EPERM)]
    [InlineData(BlockErrno.EINVAL)]
    public async Task The_errno_arrives_with_the_blkdebug_node_name(BlockErrno errno)
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Read, Errno: errno));
        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.ReadAsync(4096, new byte[512]));
        Assert.Equal(errno, ex.Errno);
        Assert.Equal((int)errno, ex.HResult);
        Assert.Equal("dbg", ex.NodeName);
        Assert.Equal(BlockOperation.Read, ex.Operation);
        Assert.Equal(4096, ex.Offset);
        Assert.Equal(512, ex.Length);
        Assert.StartsWith($"node 'dbg': read at offset 4096 length 512: {errno.Describe()} (injected by blkdebug rule ", ex.Message);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public async Task After_n_the_next_matching_request_fails_and_others_do_not_count(int after)
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Write, Offset: 0, Length: 4096, After: after));
        for (var i = 0; i < after; i++)
        {
            // Neither another operation on the range nor a write elsewhere counts.
            await s.Root.ReadAsync(0, new byte[4096]);
            await s.Root.WriteAsync(8192, new byte[4096]);
            await s.Root.WriteAsync(0, new byte[100]);
        }

        Assert.Equal(0, s.Blkdebug.InjectedCount);
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.WriteAsync(100, new byte[100]));
        Assert.Equal(1, s.Blkdebug.InjectedCount);

        // Not a once-rule: it keeps failing.
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.WriteAsync(0, new byte[1]));
        Assert.Equal(2, s.Blkdebug.InjectedCount);
        Assert.Equal(2 * after, s.Recorder.Count(BlockOperation.Write));
    }

    [Fact]
    public async Task Once_fails_one_request_and_then_lets_them_pass()
    {
        await using var s = await OpenAsync();
        var rule = s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Write, Once: true));
        Assert.Equal([rule], s.Blkdebug.Rules);
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.WriteAsync(0, new byte[512]));
        Assert.Empty(s.Blkdebug.Rules);
        for (var i = 0; i < 3; i++)
        {
            await s.Root.WriteAsync(0, new byte[512]);
        }

        Assert.Equal(1, s.Blkdebug.InjectedCount);
        Assert.Equal(3, s.Recorder.Count(BlockOperation.Write));
    }

    [Fact]
    public async Task After_n_once_fails_exactly_the_n_plus_first_matching_request()
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Discard, After: 2, Once: true));
        await s.Root.DiscardAsync(0, 512);
        await s.Root.DiscardAsync(0, 512);
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.DiscardAsync(0, 512));
        await s.Root.DiscardAsync(0, 512);
        Assert.Equal(1, s.Blkdebug.InjectedCount);
        Assert.Equal(3, s.Recorder.Count(BlockOperation.Discard));
    }

    [Fact]
    public async Task Without_once_every_matching_request_fails()
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.WriteZeroes));
        for (var i = 0; i < 10; i++)
        {
            await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.WriteZeroesAsync(i * 4096, 4096));
        }

        Assert.Equal(10, s.Blkdebug.InjectedCount);
        Assert.Single(s.Blkdebug.Rules);
        Assert.Equal(0, s.Recorder.Count(BlockOperation.WriteZeroes));
    }

    [Fact]
    public async Task A_removed_rule_stops_at_once_and_clear_removes_all()
    {
        await using var s = await OpenAsync();
        var rule = s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Read));
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.ReadAsync(0, new byte[512]));
        Assert.True(s.Blkdebug.RemoveRule(rule));
        await s.Root.ReadAsync(0, new byte[512]);
        Assert.False(s.Blkdebug.RemoveRule(rule));

        // Rules are removed by reference: an equal rule is a different rule.
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Read));
        Assert.False(s.Blkdebug.RemoveRule(new BlkdebugRule(Operation: BlockOperation.Read)));
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Write));
        s.Blkdebug.ClearRules();
        Assert.Empty(s.Blkdebug.Rules);
        await s.Root.ReadAsync(0, new byte[512]);
        await s.Root.WriteAsync(0, new byte[512]);
        Assert.Equal(1, s.Blkdebug.InjectedCount);
    }

    [Fact]
    public async Task The_first_rule_that_fires_decides_and_a_rule_waiting_for_after_lets_later_ones_fire()
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Write, Errno: BlockErrno.ENOSPC, After: 1));
        s.Blkdebug.AddRule(new BlkdebugRule(Errno: BlockErrno.EPERM));
        Assert.Equal(BlockErrno.EPERM, (await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.WriteAsync(0, new byte[1]))).Errno);
        Assert.Equal(BlockErrno.ENOSPC, (await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.WriteAsync(0, new byte[1]))).Errno);
        Assert.Equal(BlockErrno.EPERM, (await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.ReadAsync(0, new byte[1]))).Errno);
        Assert.Equal(3, s.Blkdebug.InjectedCount);
    }

    [Fact]
    public async Task A_rule_added_while_a_request_runs_applies_to_later_requests_only()
    {
        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(Size));
        var gateNode = await GateFilter.OpenAsync(graph, "gate", disk);
        var gate = (GateFilter)gateNode.Driver;
        var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", gateNode);
        var blkdebug = (BlkdebugFilter)dbg.Driver;
        var root = graph.AttachRoot(dbg, new RootParent("test"));

        // The first write has passed blkdebug and waits below it when the rule arrives.
        var first = root.WriteAsync(0, Enumerable.Repeat((byte)0x42, 512).ToArray()).AsTask();
        await gate.WaitArrivedAsync(1);
        blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Write));
        gate.Open();
        await first;

        await Assert.ThrowsAsync<BlockIOException>(async () => await root.WriteAsync(512, new byte[512]));
        var data = new byte[1024];
        await disk.ReadAsync(0, data);
        Assert.All(data[..512], b => Assert.Equal(0x42, b));
        Assert.Equal(1, blkdebug.InjectedCount);
        Assert.Equal(1, gate.Arrived);
    }

    [Theory]
    [InlineData(BlockOperation.Write)]
    [InlineData(BlockOperation.WriteZeroes)]
    [InlineData(BlockOperation.Discard)]
    public async Task A_failed_request_leaves_the_child_unchanged_but_marks_the_blkdebug_nodes_dirty_bitmap(BlockOperation operation)
    {
        await using var s = await OpenAsync();
        var dbgBitmap = s.Dbg.CreateDirtyBitmap(4096);
        var diskBitmap = s.Disk.CreateDirtyBitmap(4096);
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: operation));

        var request = operation switch
        {
            BlockOperation.Write => s.Root.WriteAsync(8192, new byte[4096]),
            BlockOperation.WriteZeroes => s.Root.WriteZeroesAsync(8192, 4096),
            _ => s.Root.DiscardAsync(8192, 4096),
        };
        await Assert.ThrowsAsync<BlockIOException>(async () => await request);

        // BlockNode marks in a finally around the driver call: a failed request may have changed part
        // of the range below, so the node that saw it fail counts it as dirty.
        Assert.True(dbgBitmap.IsDirty(8192));
        Assert.Equal(4096, dbgBitmap.DirtyBytes);

        // The request never got past blkdebug: nothing below it saw or changed anything.
        Assert.Equal(0, diskBitmap.DirtyBytes);
        Assert.Equal(0, s.Recorder.Total);
        var data = new byte[Size];
        await s.Disk.ReadAsync(0, data);
        Assert.Equal(-1, data.AsSpan().IndexOfAnyExcept(Old));
    }

    [Fact]
    public async Task A_request_refused_by_validation_reaches_no_rule_and_marks_nothing()
    {
        await using var s = await OpenAsync();
        var dbgBitmap = s.Dbg.CreateDirtyBitmap(4096);
        s.Blkdebug.AddRule(new BlkdebugRule(Errno: BlockErrno.ENOSPC));
        var ex = await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.WriteAsync(Size - 1, new byte[2]));
        Assert.Equal(BlockErrno.EINVAL, ex.Errno);
        Assert.Equal(0, s.Blkdebug.InjectedCount);
        Assert.Equal(0, dbgBitmap.DirtyBytes);

        // A failed read marks nothing either.
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.ReadAsync(0, new byte[512]));
        Assert.Equal(0, dbgBitmap.DirtyBytes);
    }

    [Fact]
    public async Task Align_imposes_a_request_alignment_on_parents()
    {
        await using var s = await OpenAsync(new BlkdebugOptions(Align: 4096));
        Assert.Equal(4096, s.Dbg.Limits.RequestAlignment);

        // An unaligned write is padded: the child sees a read of the block and a write of the whole block.
        await s.Root.WriteAsync(512, new byte[512]);
        Assert.Equal([(BlockOperation.Read, RequestFlags.None), (BlockOperation.Write, RequestFlags.None)], s.Recorder.Calls);
        var block = new byte[4096];
        await s.Disk.ReadAsync(0, block);
        Assert.Equal(Enumerable.Repeat(Old, 512).Concat(new byte[512]).Concat(Enumerable.Repeat(Old, 3072)), block);
        s.Recorder.Clear();
        await s.Root.WriteAsync(4096, new byte[4096]);
        Assert.Equal([(BlockOperation.Write, RequestFlags.None)], s.Recorder.Calls);

        await using var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(Size));
        await Assert.ThrowsAsync<ArgumentException>(async () => await BlkdebugFilter.OpenAsync(graph, "bad", disk, new BlkdebugOptions(Align: 3)));
        Assert.Null(graph.FindNode("bad"));
    }

    [Fact]
    public async Task A_flush_with_nothing_written_since_the_last_one_is_skipped()
    {
        await using var s = await OpenAsync();
        s.Blkdebug.AddRule(new BlkdebugRule(Operation: BlockOperation.Flush));

        await s.Root.FlushAsync();
        await s.Root.WriteAsync(0, new byte[512]);
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.FlushAsync());
        // The failed flush made nothing durable: the next one is tried again.
        await Assert.ThrowsAsync<BlockIOException>(async () => await s.Root.FlushAsync());

        Assert.Equal(2, s.Blkdebug.InjectedCount);
    }
}
