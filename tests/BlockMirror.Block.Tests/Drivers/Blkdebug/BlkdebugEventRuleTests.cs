using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// QEMU's event-armed blkdebug rules: nothing fails before a rule's event fires in the rule's state; then
/// the next requests of its iotypes that cover its sector fail, once or until another event re-arms.
/// Stack: root edge -> raw 'fmt' -> blkdebug 'dbg' -> memory 'disk'. The raw node raises read_aio and
/// write_aio on blkdebug, and its flushes flush_to_os and flush_to_disk; the root can also send straight to
/// 'dbg', which raises nothing.
/// </summary>
public sealed class BlkdebugEventRuleTests
{
    const long Size = 1 << 20;

    sealed record Stack(BlockGraph Graph, NodeEdge Format, NodeEdge Direct, BlkdebugFilter Blkdebug) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => Graph.DisposeAsync();
    }

    static async Task<Stack> OpenAsync(BlkdebugInjectError[]? injects = null, BlkdebugSetState[]? setStates = null)
    {
        var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(Size));
        var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", disk, new BlkdebugOptions(InjectErrors: injects, SetStates: setStates));
        var fmt = await RawDriver.OpenAsync(graph, "fmt", dbg);
        return new Stack(graph, graph.AttachRoot(fmt, new RootParent("guest")), graph.AttachRoot(dbg, new RootParent("direct")), (BlkdebugFilter)dbg.Driver);
    }

    static Task<BlockIOException> FailsAsync(Func<Task> request) => Assert.ThrowsAsync<BlockIOException>(request);

    [Fact]
    public async Task A_rule_is_armed_by_its_event_and_then_fails_requests_of_every_default_iotype()
    {
        await using var s = await OpenAsync([new BlkdebugInjectError(BlkdebugEvent.ReadAio, Errno: (int)BlockErrno.ENOSPC)]);

        // Nothing raised read_aio yet: writes through the format (write_aio) and anything sent directly pass.
        await s.Format.WriteAsync(0, new byte[4096]);
        await s.Direct.ReadAsync(0, new byte[4096]);
        Assert.Empty(s.Blkdebug.ArmedRules);

        var read = await FailsAsync(() => s.Format.ReadAsync(0, new byte[4096]).AsTask());
        Assert.Equal(BlockErrno.ENOSPC, read.Errno);
        Assert.Single(s.Blkdebug.ArmedRules);

        // Armed, the rule fails requests whatever raised nothing: a direct write, a discard, a flush.
        await FailsAsync(() => s.Direct.WriteAsync(0, new byte[4096]).AsTask());
        await FailsAsync(() => s.Direct.DiscardAsync(0, 4096).AsTask());
        await FailsAsync(() => s.Direct.FlushAsync().AsTask());
        // Block status and truncate are not among the default iotypes.
        await s.Direct.GetBlockStatusAsync(0, 4096);
        await s.Direct.TruncateAsync(Size);
    }

    [Fact]
    public async Task The_none_event_is_raised_once_as_the_node_is_made()
    {
        // QEMU's "none": armed before any request, and a set-state under it has moved the state at open.
        await using var s = await OpenAsync(
            [new BlkdebugInjectError(BlkdebugEvent.None, IoTypes: 1 << (int)BlockOperation.Read, Once: true)],
            [new BlkdebugSetState(BlkdebugEvent.None, 1, 3)]);
        Assert.Equal(3, s.Blkdebug.State);
        Assert.Single(s.Blkdebug.ArmedRules);

        await s.Direct.WriteAsync(0, new byte[4096]);
        await FailsAsync(() => s.Direct.ReadAsync(0, new byte[4096]).AsTask());
        await s.Direct.ReadAsync(0, new byte[4096]);
        Assert.Empty(s.Blkdebug.ArmedRules);
    }

    [Fact]
    public async Task Set_state_on_the_first_flush_lets_the_second_flush_fail_once()
    {
        // mirror-ready-cancel-error's target: state 2 on the first flush_to_disk, which then arms the error.
        await using var s = await OpenAsync(
            [new BlkdebugInjectError(BlkdebugEvent.FlushToDisk, State: 2, Once: true, Immediately: true)],
            [new BlkdebugSetState(BlkdebugEvent.FlushToDisk, 1, 2)]);
        Assert.Equal(1, s.Blkdebug.State);

        await s.Format.WriteAsync(0, new byte[4096]);
        await s.Format.FlushAsync();
        Assert.Equal(2, s.Blkdebug.State);

        await s.Format.WriteAsync(0, new byte[4096]);
        await FailsAsync(() => s.Format.FlushAsync().AsTask());

        // Once: the rule is gone, and state 2 has no set-state rule to leave it.
        await s.Format.WriteAsync(0, new byte[4096]);
        await s.Format.FlushAsync();
        Assert.Equal(2, s.Blkdebug.State);
        Assert.Empty(s.Blkdebug.ArmedRules);
    }

    [Fact]
    public async Task A_flush_with_nothing_to_make_durable_raises_no_flush_to_disk()
    {
        await using var s = await OpenAsync(setStates: [new BlkdebugSetState(BlkdebugEvent.FlushToDisk, 0, 7), new BlkdebugSetState(BlkdebugEvent.FlushToOs, 1, 3)]);

        await s.Format.FlushAsync();
        Assert.Equal(3, s.Blkdebug.State);

        await s.Format.WriteAsync(0, new byte[512]);
        await s.Format.FlushAsync();
        Assert.Equal(7, s.Blkdebug.State);
    }

    [Fact]
    public async Task Without_once_an_armed_rule_keeps_failing()
    {
        await using var s = await OpenAsync([new BlkdebugInjectError(BlkdebugEvent.WriteAio)]);

        for (var i = 0; i < 3; i++)
        {
            await FailsAsync(() => s.Format.WriteAsync(0, new byte[512]).AsTask());
        }

        await FailsAsync(() => s.Direct.ReadAsync(0, new byte[512]).AsTask());
        Assert.Equal(4, s.Blkdebug.InjectedCount);
    }

    [Fact]
    public async Task A_once_rule_fires_once_even_when_its_event_comes_again()
    {
        await using var s = await OpenAsync([new BlkdebugInjectError(BlkdebugEvent.WriteAio, Once: true)]);

        await FailsAsync(() => s.Format.WriteAsync(0, new byte[512]).AsTask());
        await s.Format.WriteAsync(0, new byte[512]);
        await s.Format.WriteAsync(0, new byte[512]);
        Assert.Equal(1, s.Blkdebug.InjectedCount);
    }

    [Fact]
    public async Task A_sector_rule_fails_only_requests_that_cover_that_sector_and_never_a_flush()
    {
        await using var s = await OpenAsync([new BlkdebugInjectError(BlkdebugEvent.ReadAio, Offset: 8 * 512)]);
        await s.Format.ReadAsync(0, new byte[4096]);

        await s.Direct.ReadAsync(0, new byte[4096]);
        await s.Direct.ReadAsync(8 * 512 + 512, new byte[4096]);
        await s.Direct.FlushAsync();
        await FailsAsync(() => s.Direct.ReadAsync(8 * 512, new byte[512]).AsTask());
        await FailsAsync(() => s.Direct.WriteAsync(0, new byte[8192]).AsTask());
    }

    [Fact]
    public async Task An_iotype_limits_the_rule_to_that_operation()
    {
        await using var s = await OpenAsync([new BlkdebugInjectError(BlkdebugEvent.ReadAio, IoTypes: 1 << (int)BlockOperation.Write)]);

        // read_aio arms it, but the read it came with is not a write.
        await s.Format.ReadAsync(0, new byte[512]);
        await s.Direct.FlushAsync();
        await FailsAsync(() => s.Direct.WriteAsync(0, new byte[512]).AsTask());
    }

    [Fact]
    public async Task Rules_of_another_state_stay_unarmed_and_state_0_means_any()
    {
        await using var s = await OpenAsync(
            [new BlkdebugInjectError(BlkdebugEvent.ReadAio, State: 2), new BlkdebugInjectError(BlkdebugEvent.WriteAio, State: 0, Errno: (int)BlockErrno.EPERM)],
            [new BlkdebugSetState(BlkdebugEvent.ReadAio, 1, 2)]);

        // The read moves to state 2 but arms nothing: the rule compares with the state before the event.
        await s.Format.ReadAsync(0, new byte[512]);
        Assert.Equal(2, s.Blkdebug.State);
        Assert.Empty(s.Blkdebug.ArmedRules);

        var write = await FailsAsync(() => s.Format.WriteAsync(0, new byte[512]).AsTask());
        Assert.Equal(BlockErrno.EPERM, write.Errno);
        await FailsAsync(() => s.Format.ReadAsync(0, new byte[512]).AsTask());
        Assert.Equal(BlkdebugEvent.ReadAio, Assert.Single(s.Blkdebug.ArmedRules).Event);
    }

    [Fact]
    public async Task An_event_that_arms_rules_replaces_what_was_armed_and_one_that_arms_none_keeps_it()
    {
        await using var s = await OpenAsync(
            [new BlkdebugInjectError(BlkdebugEvent.ReadAio, Offset: 0), new BlkdebugInjectError(BlkdebugEvent.WriteAio, State: 5, Offset: 0)],
            [new BlkdebugSetState(BlkdebugEvent.FlushToOs, 0, 5)]);
        await FailsAsync(() => s.Format.ReadAsync(0, new byte[512]).AsTask());

        // write_aio arms nothing in state 1: the read rule stays armed and fails the write.
        await FailsAsync(() => s.Format.WriteAsync(0, new byte[512]).AsTask());
        Assert.Equal(BlkdebugEvent.ReadAio, Assert.Single(s.Blkdebug.ArmedRules).Event);

        // In state 5 write_aio arms its own rule, which takes the read rule's place.
        await s.Format.FlushAsync();
        await FailsAsync(() => s.Format.WriteAsync(0, new byte[512]).AsTask());
        Assert.Equal(BlkdebugEvent.WriteAio, Assert.Single(s.Blkdebug.ArmedRules).Event);
    }

    [Fact]
    public async Task The_first_armed_rule_that_covers_a_request_decides_and_errno_0_lets_it_through()
    {
        await using var s = await OpenAsync(
        [
            new BlkdebugInjectError(BlkdebugEvent.ReadAio, Errno: 0, Offset: 0),
            new BlkdebugInjectError(BlkdebugEvent.ReadAio, Errno: (int)BlockErrno.EINVAL),
        ]);

        // The errno-0 rule covers sector 0 and shadows the rule after it; elsewhere the second one fails.
        await s.Format.ReadAsync(0, new byte[512]);
        await s.Direct.ReadAsync(0, new byte[512]);
        var other = await FailsAsync(() => s.Direct.ReadAsync(4096, new byte[512]).AsTask());
        Assert.Equal(BlockErrno.EINVAL, other.Errno);
    }

    [Fact]
    public async Task The_first_declared_set_state_of_an_event_wins()
    {
        await using var s = await OpenAsync(setStates: [new BlkdebugSetState(BlkdebugEvent.ReadAio, 1, 4), new BlkdebugSetState(BlkdebugEvent.ReadAio, 0, 9)]);

        await s.Format.ReadAsync(0, new byte[512]);
        Assert.Equal(4, s.Blkdebug.State);
        await s.Format.ReadAsync(0, new byte[512]);
        Assert.Equal(9, s.Blkdebug.State);
    }

    [Fact]
    public async Task Our_own_rules_still_fire_from_the_start_beside_qemus()
    {
        await using var s = await OpenAsync([new BlkdebugInjectError(BlkdebugEvent.FlushToDisk)]);
        var rule = s.Blkdebug.AddRule(new BlkdebugRule(BlockOperation.Read, Errno: BlockErrno.EACCES));

        var read = await FailsAsync(() => s.Direct.ReadAsync(0, new byte[512]).AsTask());
        Assert.Equal(BlockErrno.EACCES, read.Errno);
        s.Blkdebug.RemoveRule(rule);
        await s.Direct.ReadAsync(0, new byte[512]);
    }
}
