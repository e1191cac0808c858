using System.Net.Sockets;
using System.Text;
using BlockMirror.Net.Listening;
using BlockMirror.TestKit;

namespace BlockMirror.Net.Tests;

public sealed class SocketListenerTests
{
    [Fact]
    public async Task Serves_each_client_with_the_upgraded_stream_and_removes_its_socket_file_on_stop()
    {
        using var dir = new TempDirectory("blockmirror-listener-");
        var path = dir.File("l.sock");
        var listener = SocketListener.Bind(new UnixDomainSocketEndPoint(path), backlog: 4);
        var gate = new TaskCompletionSource();
        listener.Start(async (stream, cancellationToken) =>
        {
            await using (stream)
            {
                var buffer = new byte[5];
                await stream.ReadExactlyAsync(buffer, cancellationToken);
                await stream.WriteAsync(buffer, cancellationToken);
            }
        }, gate.Task, (stream, _) => ValueTask.FromResult<Stream>(new PrefixStream(stream, "up:")));

        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await client.ConnectAsync(new UnixDomainSocketEndPoint(path));
        await client.SendAsync("hello"u8.ToArray());
        // Not accepted before the gate opens: the client waits in the backlog.
        Assert.Equal(0, listener.ConnectionCount);
        gate.SetResult();
        var reply = new byte[8];
        var read = 0;
        while (read < reply.Length)
        {
            var n = await client.ReceiveAsync(reply.AsMemory(read));
            Assert.NotEqual(0, n);
            read += n;
        }

        Assert.Equal("up:hello", Encoding.ASCII.GetString(reply));
        await listener.StopAsync();
        Assert.False(File.Exists(path));
    }

    /// <summary>
    /// With a connection limit, the client past it is not accepted (it waits in the backlog, connected as far as its
    /// kernel is concerned) until a served one ends, as QEMU's NBD server does at its max-connections.
    /// </summary>
    [Fact]
    public async Task Past_the_connection_limit_a_client_waits_in_the_backlog_until_one_ends()
    {
        using var dir = new TempDirectory("blockmirror-listener-limit-");
        var path = dir.File("l.sock");
        var listener = SocketListener.Bind(new UnixDomainSocketEndPoint(path), backlog: 4);
        var served = new System.Collections.Concurrent.ConcurrentQueue<int>();
        listener.Start(async (stream, cancellationToken) =>
        {
            await using (stream)
            {
                var buffer = new byte[1];
                await stream.ReadExactlyAsync(buffer, cancellationToken);
                served.Enqueue(buffer[0]);
                // Held until the client closes.
                _ = await stream.ReadAsync(buffer, cancellationToken);
            }
        }, maxConnections: 1);

        using var first = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await first.ConnectAsync(new UnixDomainSocketEndPoint(path));
        await first.SendAsync(new byte[] { 1 });
        using var second = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await second.ConnectAsync(new UnixDomainSocketEndPoint(path));
        await second.SendAsync(new byte[] { 2 });

        for (var wait = 0; wait < 200 && served.IsEmpty; wait++)
        {
            await Task.Delay(10);
        }

        await Task.Delay(300);
        Assert.Equal([1], served);
        Assert.Equal(1, listener.ConnectionCount);

        first.Shutdown(SocketShutdown.Both);
        for (var wait = 0; wait < 500 && served.Count < 2; wait++)
        {
            await Task.Delay(10);
        }

        Assert.Equal([1, 2], served);
        second.Shutdown(SocketShutdown.Both);
        await listener.StopAsync();
    }

    /// <summary>
    /// What a daemon killed before it could clean up leaves at its socket path: a socket file nobody listens on. The
    /// next daemon binds there (QEMU's does, by removing whatever is at the path). A regular file there is someone's
    /// data, and a socket someone listens on is theirs: both make the bind fail and stay as they were.
    /// </summary>
    [Fact]
    public async Task A_stale_socket_file_is_replaced_and_a_regular_file_or_a_live_socket_is_not()
    {
        using var dir = new TempDirectory("blockmirror-listener-stale-");
        var stale = dir.File("stale.sock");
        using (var dead = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            // .NET removes the path a socket was bound to when it is closed; a killed daemon cannot. Moved away
            // from that path, the socket file outlives its socket as a killed daemon's does.
            dead.Bind(new UnixDomainSocketEndPoint(dir.File("bound.sock")));
            dead.Listen(1);
            File.Move(dir.File("bound.sock"), stale);
        }

        Assert.True(File.Exists(stale));
        var listener = SocketListener.Bind(new UnixDomainSocketEndPoint(stale), backlog: 4);
        listener.Start(async (stream, _) => await stream.DisposeAsync());
        using (var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            await client.ConnectAsync(new UnixDomainSocketEndPoint(stale));
        }

        await listener.StopAsync();

        var file = dir.File("data.sock");
        await File.WriteAllTextAsync(file, "someone's data");
        var refused = Assert.Throws<SocketException>(() => SocketListener.Bind(new UnixDomainSocketEndPoint(file), backlog: 4));
        Assert.Equal(SocketError.AddressAlreadyInUse, refused.SocketErrorCode);
        Assert.Equal("someone's data", await File.ReadAllTextAsync(file));

        var live = dir.File("live.sock");
        using var owner = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        owner.Bind(new UnixDomainSocketEndPoint(live));
        owner.Listen(1);
        refused = Assert.Throws<SocketException>(() => SocketListener.Bind(new UnixDomainSocketEndPoint(live), backlog: 4));
        Assert.Equal(SocketError.AddressAlreadyInUse, refused.SocketErrorCode);
        using var stillTheirs = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await stillTheirs.ConnectAsync(new UnixDomainSocketEndPoint(live));
        using var accepted = await owner.AcceptAsync();
    }

    [Fact]
    public async Task An_accept_that_fails_for_want_of_descriptors_waits_doubling_instead_of_retrying_at_once()
    {
        using var dir = new TempDirectory("blockmirror-listener-");
        var path = dir.File("l.sock");
        var time = new ManualTimeProvider();
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Bind(new UnixDomainSocketEndPoint(path));
        socket.Listen(4);
        const int failures = 5;
        var calls = new List<TimeSpan>();
        var listener = new SocketListener(socket, path, time, (s, cancellationToken) =>
        {
            lock (calls)
            {
                calls.Add(time.Elapsed);
                if (calls.Count <= failures)
                {
                    // What accept(2) says when the process is out of descriptors (EMFILE).
                    throw new SocketException((int)SocketError.TooManyOpenSockets);
                }
            }

            return s.AcceptAsync(cancellationToken);
        });
        var served = new TaskCompletionSource();
        listener.Start((stream, _) => { served.TrySetResult(); return stream.DisposeAsync().AsTask(); });

        // Each failure leaves exactly one timer waiting and no new accept until the clock reaches it.
        var expected = new List<TimeSpan>();
        var wait = SocketListener.MinBackoff;
        var at = TimeSpan.Zero;
        for (var i = 0; i < failures; i++)
        {
            expected.Add(at);
            await WaitUntilAsync(() => time.PendingTimers == 1);
            lock (calls)
            {
                Assert.Equal(expected, calls);
            }

            time.Advance(wait);
            at += wait;
            wait *= 2;
        }

        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await client.ConnectAsync(new UnixDomainSocketEndPoint(path));
        await served.Task.WaitAsync(TimeSpan.FromSeconds(30));
        lock (calls)
        {
            Assert.Equal([.. expected, at], calls.Take(failures + 1));
        }

        await listener.StopAsync();
    }

    internal static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        while (!condition())
        {
            await Task.Delay(1, timeout.Token);
        }
    }

    /// <summary>A stream upgrade that makes itself seen: writes a prefix before the first write.</summary>
    sealed class PrefixStream(Stream inner, string prefix) : Stream
    {
        bool _prefixed;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (!_prefixed)
            {
                _prefixed = true;
                await inner.WriteAsync(Encoding.ASCII.GetBytes(prefix), cancellationToken);
            }

            await inner.WriteAsync(buffer, cancellationToken);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                inner.Dispose();
            }

            base.Dispose(disposing);
        }
    }

    [Fact]
    public async Task An_empty_host_listens_on_both_wildcards_and_the_connection_limit_spans_both_sockets()
    {
        int port;
        using (var probe = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp) { DualMode = true })
        {
            probe.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Any, 0));
            port = ((System.Net.IPEndPoint)probe.LocalEndPoint!).Port;
        }

        var listener = SocketListener.Bind(InetListenEndPoint.Resolve("", $"{port}", null, null, numeric: false), backlog: 4);
        Assert.Equal(["0.0.0.0", "::"], listener.LocalEndPoints.Select(e => ((System.Net.IPEndPoint)e).Address.ToString()));
        var greeted = new SemaphoreSlim(0);
        listener.Start(async (stream, cancellationToken) =>
        {
            await stream.WriteAsync("hi"u8.ToArray(), cancellationToken);
            greeted.Release();
            // Served until the client leaves.
            _ = await stream.ReadAsync(new byte[1], cancellationToken);
            await stream.DisposeAsync();
        }, maxConnections: 1);

        using var v4 = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await v4.ConnectAsync(System.Net.IPAddress.Loopback, port);
        Assert.True(await greeted.WaitAsync(TimeSpan.FromSeconds(10)));
        using var v6 = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
        await v6.ConnectAsync(System.Net.IPAddress.IPv6Loopback, port);
        // The limit is the listener's, not each socket's: the IPv6 client waits for the IPv4 one to leave.
        Assert.False(await greeted.WaitAsync(TimeSpan.FromMilliseconds(300)));
        v4.Close();
        Assert.True(await greeted.WaitAsync(TimeSpan.FromSeconds(10)));
        await listener.StopAsync();
    }
}
