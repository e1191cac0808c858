using System.Net.Sockets;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Nbd.Client;
using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;
using Microsoft.Extensions.Time.Testing;

namespace BlockMirror.Nbd.Tests.Client;

/// <summary>
/// Our client against a server that goes quiet or breaks off: a handshake cut by a reset is named by the step
/// it broke, a server that never greets fails the open after the attempt's timeout, and closing a connection
/// (or a node) whose server stopped answering ends within its grace.
/// </summary>
public sealed class NbdClientSilentServerTests : IDisposable
{
    /// <summary>Far above what any case takes; only a hang reaches it.</summary>
    static readonly TimeSpan Guard = TimeSpan.FromSeconds(20);

    readonly TempDirectory _dir = new("blockmirror-nbd-silent-");

    public void Dispose() => _dir.Dispose();

    FakeNbdServer Server(Func<FakeNbdSession, Task> script) => new(_dir.File($"{Guid.NewGuid():N}.sock"), script);

    static async Task<string> OpenFailureAsync(FakeNbdServer server, TimeSpan? attemptTimeout = null)
    {
        await using var graph = new BlockGraph();
        var options = new NbdClientOptions(new NbdServerAddress { UnixPath = server.SocketPath }) { AttemptTimeout = attemptTimeout ?? TimeSpan.FromSeconds(30) };
        var refused = await Assert.ThrowsAsync<BlockOpenException>(async () =>
            await NbdClientDriver.OpenAsync(graph, "nbd0", options, readOnly: false, CancellationToken.None).AsTask().WaitAsync(Guard));
        Assert.Null(graph.FindNode("nbd0"));
        return refused.Message;
    }

    [Fact]
    public async Task A_connection_broken_off_mid_handshake_is_named_by_the_read_it_broke_not_as_the_first_one()
    {
        // The server leaves with the client's option unread: the client's read of the reply meets a reset (or,
        // had the option not arrived yet, the end of the stream). Either way the step is named.
        await using var server = Server(async s =>
        {
            await s.GreetAsync();
            await s.ReadClientFlagsAsync();
            await Task.Delay(300);
        });
        var message = await OpenFailureAsync(server);
        Assert.StartsWith("failed to read option reply: ", message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_server_that_accepts_and_never_greets_fails_the_open_after_the_attempt_timeout()
    {
        await using var server = Server(s => Task.Delay(Timeout.Infinite));
        var message = await OpenFailureAsync(server, TimeSpan.FromSeconds(1));
        Assert.Equal($"The NBD server at '{server.SocketPath}' did not complete the handshake within 1 s", message);
    }

    [Fact]
    public async Task Closing_a_connection_whose_server_stopped_answering_ends_within_the_grace_and_fails_its_requests()
    {
        var asked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = Server(async s =>
        {
            await s.HandshakeAsync();
            await s.ReadRequestAsync();
            asked.SetResult();
            await Task.Delay(Timeout.Infinite);
        });
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(server.SocketPath));
        var connection = await NbdClientConnection.OpenAsync(new NetworkStream(socket, ownsSocket: true), "", null, CancellationToken.None).WaitAsync(Guard);
        var read = connection.RequestAsync(NbdCommand.Read, NbdCommandFlags.None, 0, 4096, new byte[4096], default, CancellationToken.None).AsTask();
        await asked.Task.WaitAsync(Guard);

        await connection.DisposeAsync(TimeSpan.FromMilliseconds(200)).AsTask().WaitAsync(Guard);
        await Assert.ThrowsAsync<NbdConnectionLostException>(() => read.WaitAsync(Guard));
    }

    [Fact]
    public async Task Closing_a_writable_node_whose_server_leaves_the_flush_unanswered_ends_within_one_grace()
    {
        // The close's flush and the close's wait for that flush's reply share the grace: before they did not, and a
        // silent server held the close (and the daemon's quit) for two graces. On a fake clock: once one grace has
        // passed, the close ends with no more time passing.
        var grace = TimeSpan.FromSeconds(10);
        var time = new FakeTimeProvider();
        var flushed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = Server(async s =>
        {
            await s.HandshakeAsync();
            Assert.Equal(NbdCommand.Flush, (await s.ReadRequestAsync()).Command);
            flushed.SetResult();
            await Task.Delay(Timeout.Infinite);
        });
        var graph = new BlockGraph();
        var options = new NbdClientOptions(new NbdServerAddress { UnixPath = server.SocketPath }) { CloseGrace = grace, Time = time };
        await NbdClientDriver.OpenAsync(graph, "nbd0", options, readOnly: false, CancellationToken.None).AsTask().WaitAsync(Guard);

        var closing = graph.DisposeAsync().AsTask();
        await flushed.Task.WaitAsync(Guard);
        Assert.False(closing.IsCompleted, "the close did not wait for the flush's reply");
        time.Advance(grace);
        await closing.WaitAsync(Guard);
    }
}
