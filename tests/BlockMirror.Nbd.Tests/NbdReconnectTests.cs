using System.Net;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Client;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// The client's reconnect (QEMU 7.2's reconnect-delay): a client node over a link the test cuts and restores,
/// to an in-process server exporting a raw file.
/// </summary>
public sealed class NbdReconnectTests
{
    const long Size = 4 << 20;
    const int Block = 64 << 10;

    /// <summary>Bounds every wait in these tests: a hang fails the test instead of stalling the run.</summary>
    static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task With_reconnect_delay_requests_in_flight_and_new_ones_wait_for_the_new_connection_and_land()
    {
        await using var rig = await Rig.StartAsync(reconnectDelaySeconds: 30);
        await rig.Edge.WriteAsync(0, Pattern(1));

        rig.Link.Up = false;
        rig.Link.Cut();
        // Sixteen writes and reads issued while the destination is down: none may fail.
        var writes = Enumerable.Range(1, 16).Select(i => rig.Edge.WriteAsync(i * Block, Pattern((byte)(i + 1))).AsTask()).ToList();
        var readBack = new byte[Block];
        var read = rig.Edge.ReadAsync(0, readBack).AsTask();
        await WaitUntilAsync(() => rig.Session.State == NbdClientState.ConnectingWait);
        Assert.All(writes, w => Assert.False(w.IsCompleted));
        rig.Link.Up = true;

        await Task.WhenAll(writes).WaitAsync(HangGuard);
        await read.WaitAsync(HangGuard);
        await rig.Edge.FlushAsync();

        Assert.Equal(Pattern(1), readBack);
        Assert.Equal(NbdClientState.Connected, rig.Session.State);
        Assert.Equal(1, rig.Session.Reconnects);

        // A second loss is a new outage with a new delay: requests wait again.
        rig.Link.Up = false;
        rig.Link.Cut();
        var again = rig.Edge.WriteAsync(17 * Block, Pattern(18)).AsTask();
        await WaitUntilAsync(() => rig.Session.State == NbdClientState.ConnectingWait);
        rig.Link.Up = true;
        await again.WaitAsync(HangGuard);
        await rig.Edge.FlushAsync();
        Assert.Equal(2, rig.Session.Reconnects);
        var image = await File.ReadAllBytesAsync(rig.Server.ImagePath);
        for (var i = 0; i <= 17; i++)
        {
            Assert.Equal(Pattern((byte)(i + 1)), image.AsSpan(i * Block, Block).ToArray());
        }
    }

    [Fact]
    public async Task Without_reconnect_delay_requests_fail_at_once_and_the_client_still_connects_again_in_the_background()
    {
        await using var rig = await Rig.StartAsync(reconnectDelaySeconds: 0);
        rig.Link.Up = false;
        rig.Link.Cut();

        var failure = await Assert.ThrowsAsync<BlockIOException>(() => rig.Edge.WriteAsync(0, Pattern(7)).AsTask().WaitAsync(HangGuard));
        Assert.Equal(BlockErrno.EIO, failure.Errno);
        Assert.Equal(NbdClientState.ConnectingNoWait, rig.Session.State);

        // No request is needed to bring the link back: the loop keeps trying on its own.
        rig.Link.Up = true;
        await WaitUntilAsync(() => rig.Session.State == NbdClientState.Connected);
        await rig.Edge.WriteAsync(0, Pattern(7));
        await rig.Edge.FlushAsync();
        Assert.Equal(Pattern(7), (await File.ReadAllBytesAsync(rig.Server.ImagePath)).AsSpan(0, Block).ToArray());
    }

    [Fact]
    public async Task After_the_delay_runs_out_waiting_requests_fail_with_EIO_and_later_ones_fail_at_once_until_the_link_is_back()
    {
        await using var rig = await Rig.StartAsync(reconnectDelaySeconds: 1);
        rig.Link.Up = false;
        rig.Link.Cut();

        var waited = await Assert.ThrowsAsync<BlockIOException>(() => rig.Edge.ReadAsync(0, new byte[Block]).AsTask().WaitAsync(HangGuard));
        Assert.Equal(BlockErrno.EIO, waited.Errno);
        Assert.Contains("reconnect-delay", waited.Message, StringComparison.Ordinal);
        Assert.Equal(NbdClientState.ConnectingNoWait, rig.Session.State);

        // The delay is over: the next request does not wait (it would hang here if it did, the link being down).
        var next = rig.Edge.ReadAsync(0, new byte[Block]).AsTask();
        Assert.Equal(BlockErrno.EIO, (await Assert.ThrowsAsync<BlockIOException>(() => next.WaitAsync(HangGuard))).Errno);

        rig.Link.Up = true;
        await WaitUntilAsync(() => rig.Session.State == NbdClientState.Connected);
        await rig.Edge.ReadAsync(0, new byte[Block]);
    }

    [Fact]
    public async Task A_server_back_with_an_export_of_another_size_is_not_used_and_requests_fail_with_the_reason()
    {
        await using var rig = await Rig.StartAsync(reconnectDelaySeconds: 2);
        await using var other = await NbdFixture.StartAsync(2 * Size);
        rig.Link.Backend = new IPEndPoint(IPAddress.Loopback, other.Port);
        rig.Link.Cut();

        var failure = await Assert.ThrowsAsync<BlockIOException>(() => rig.Edge.WriteAsync(0, Pattern(9)).AsTask().WaitAsync(HangGuard));

        Assert.Equal(BlockErrno.EIO, failure.Errno);
        Assert.Contains($"it is {2 * Size} bytes, it was {Size}", failure.Message, StringComparison.Ordinal);
        Assert.True(rig.Link.Accepted > 1);
        Assert.True((await File.ReadAllBytesAsync(other.ImagePath)).All(b => b == 0));
        Assert.NotEqual(NbdClientState.Connected, rig.Session.State);
    }

    [Fact]
    public async Task A_server_that_breaks_the_protocol_is_not_connected_to_again()
    {
        await using var rig = await Rig.StartAsync(reconnectDelaySeconds: 30);
        await rig.Edge.ReadAsync(0, new byte[Block]);
        var accepted = rig.Link.Accepted;

        rig.Link.SendToClients(Enumerable.Repeat((byte)0xff, 32).ToArray());
        await WaitUntilAsync(() => rig.Session.State == NbdClientState.Quit);

        var failure = await Assert.ThrowsAsync<BlockIOException>(() => rig.Edge.ReadAsync(0, new byte[Block]).AsTask().WaitAsync(HangGuard));
        Assert.Equal(BlockErrno.EIO, failure.Errno);
        Assert.Contains("broke the protocol", failure.Message, StringComparison.Ordinal);
        Assert.Equal(accepted, rig.Link.Accepted);
    }

    [Fact]
    public async Task A_cancelled_request_stops_waiting_for_the_new_connection()
    {
        await using var rig = await Rig.StartAsync(reconnectDelaySeconds: 300);
        rig.Link.Up = false;
        rig.Link.Cut();
        using var cancel = new CancellationTokenSource();
        var write = rig.Edge.WriteAsync(0, Pattern(3), RequestFlags.None, cancel.Token).AsTask();
        await WaitUntilAsync(() => rig.Session.State == NbdClientState.ConnectingWait);

        cancel.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => write.WaitAsync(HangGuard));
    }

    [Fact]
    public async Task Closing_the_node_ends_the_reconnect_loop_and_fails_waiting_requests()
    {
        var rig = await Rig.StartAsync(reconnectDelaySeconds: 300);
        await using (rig)
        {
            rig.Link.Up = false;
            rig.Link.Cut();
            var write = rig.Edge.WriteAsync(0, Pattern(3)).AsTask();
            await WaitUntilAsync(() => rig.Session.State == NbdClientState.ConnectingWait);

            await rig.Session.DisposeAsync().AsTask().WaitAsync(HangGuard);

            Assert.Equal(BlockErrno.EIO, (await Assert.ThrowsAsync<BlockIOException>(() => write.WaitAsync(HangGuard))).Errno);
            Assert.Equal(NbdClientState.Quit, rig.Session.State);
            Assert.Equal(0, rig.Session.Reconnects);
        }
    }

    [Fact]
    public async Task With_multi_conn_every_connection_reconnects_on_its_own_and_the_requests_spread_over_them_land()
    {
        // Our server advertises NBD_FLAG_CAN_MULTI_CONN: four connections, each a session of its own.
        await using var rig = await Rig.StartAsync(reconnectDelaySeconds: 30, multiConn: 4);
        Assert.Equal(4, rig.Sessions.Count);
        Assert.Equal(4, rig.Sessions.Select(s => s.Current).Distinct().Count());

        rig.Link.Up = false;
        rig.Link.Cut();
        var writes = Enumerable.Range(0, 16).Select(i => rig.Edge.WriteAsync(i * Block, Pattern((byte)(i + 1))).AsTask()).ToList();
        await WaitUntilAsync(() => rig.Sessions.All(s => s.State == NbdClientState.ConnectingWait));
        Assert.All(writes, w => Assert.False(w.IsCompleted));
        rig.Link.Up = true;

        await Task.WhenAll(writes).WaitAsync(HangGuard);
        // One flush covers the writes completed on every connection (the flag's promise).
        await rig.Edge.FlushAsync();
        Assert.All(rig.Sessions, s => Assert.Equal(1, s.Reconnects));
        var image = await File.ReadAllBytesAsync(rig.Server.ImagePath);
        for (var i = 0; i < 16; i++)
        {
            Assert.Equal(Pattern((byte)(i + 1)), image.AsSpan(i * Block, Block).ToArray());
        }
    }

    static byte[] Pattern(byte value) => Enumerable.Repeat(value, Block).ToArray();

    static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var guard = new CancellationTokenSource(HangGuard);
        while (!condition())
        {
            await Task.Delay(20, guard.Token);
        }
    }

    /// <summary>A server, the link to it, and a writable client node over the link.</summary>
    sealed class Rig : IAsyncDisposable
    {
        Rig(NbdFixture server, NbdLinkRelay link, BlockGraph graph, BlockNode node)
        {
            Server = server;
            Link = link;
            Graph = graph;
            Edge = graph.AttachRoot(node, new RootParent("test"), takes: BlockPermissions.ConsistentRead | BlockPermissions.Write);
            Session = ((NbdClientDriver)node.Driver).Session;
            Sessions = ((NbdClientDriver)node.Driver).Sessions;
        }

        /// <summary>Every connection's session (more than one with multi-conn).</summary>
        public IReadOnlyList<NbdClientSession> Sessions { get; }

        public NbdFixture Server { get; }

        public NbdLinkRelay Link { get; }

        public BlockGraph Graph { get; }

        public NodeEdge Edge { get; }

        public NbdClientSession Session { get; }

        public static async Task<Rig> StartAsync(int reconnectDelaySeconds, int multiConn = 1)
        {
            var server = await NbdFixture.StartAsync(Size);
            var link = new NbdLinkRelay(server.Directory.File("link.sock"), new IPEndPoint(IPAddress.Loopback, server.Port));
            var graph = new BlockGraph();
            var options = new NbdClientOptions(new NbdServerAddress { UnixPath = link.Path }, NbdFixture.ExportName,
                ReconnectDelay: TimeSpan.FromSeconds(reconnectDelaySeconds), MultiConn: multiConn);
            var node = await NbdClientDriver.OpenAsync(graph, "target", options, readOnly: false, CancellationToken.None);
            return new Rig(server, link, graph, node);
        }

        public async ValueTask DisposeAsync()
        {
            await Graph.DisposeAsync();
            await Link.DisposeAsync();
            await Server.DisposeAsync();
        }
    }
}
