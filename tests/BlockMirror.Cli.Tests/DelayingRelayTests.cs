using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The two-host tests' delaying relay, on loopback in front of an echo server: every byte arrives, in order,
/// both ways; a round trip takes at least the delay it adds; a close travels through; a refused target resets
/// the client.
/// </summary>
public sealed class DelayingRelayTests
{
    static readonly TimeSpan RoundTrip = TimeSpan.FromMilliseconds(10);

    [Fact]
    public async Task Bytes_go_through_both_ways_in_order_and_a_close_follows_them()
    {
        using var echo = new EchoServer();
        using var relay = await DelayingRelay.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), echo.EndPoint, RoundTrip);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(relay.EndPoint);
        var sent = new byte[8 << 20];
        new Random(16).NextBytes(sent);

        var sending = Task.Run(async () =>
        {
            for (var offset = 0; offset < sent.Length; offset += 100_000)
            {
                await client.SendAsync(sent.AsMemory(offset, Math.Min(100_000, sent.Length - offset)));
            }

            client.Shutdown(SocketShutdown.Send);
        });
        var received = new MemoryStream();
        var buffer = new byte[65536];
        int read;
        while ((read = await client.ReceiveAsync(buffer)) > 0)
        {
            received.Write(buffer, 0, read);
        }

        await sending;
        // The echo server closes when it sees our close: the end of the stream came back through the relay.
        Assert.Equal(sent, received.ToArray());
        Assert.Equal(1, relay.Connections);
    }

    [Fact]
    public async Task A_round_trip_takes_at_least_the_added_delay()
    {
        using var echo = new EchoServer();
        using var relay = await DelayingRelay.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), echo.EndPoint, RoundTrip);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await client.ConnectAsync(relay.EndPoint);
        var buffer = new byte[1];
        for (var i = 0; i < 5; i++)
        {
            var clock = Stopwatch.StartNew();
            await client.SendAsync(new byte[] { (byte)i });
            Assert.Equal(1, await client.ReceiveAsync(buffer));
            // A lower bound only: a slow machine can make a round trip longer, never shorter.
            Assert.True(clock.Elapsed >= RoundTrip, $"round trip {clock.Elapsed.TotalMilliseconds} ms");
            Assert.Equal((byte)i, buffer[0]);
        }
    }

    [Fact]
    public async Task A_refused_target_resets_the_client()
    {
        // A port nothing listens on: bind, note it, close.
        var free = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        free.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var closedPort = (IPEndPoint)free.LocalEndPoint!;
        free.Dispose();
        using var relay = await DelayingRelay.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), closedPort, RoundTrip);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));

        // The reset can come before the connect's completion is collected, which then reports it.
        var error = await Assert.ThrowsAsync<SocketException>(async () =>
        {
            await client.ConnectAsync(relay.EndPoint, timeout.Token);
            await client.ReceiveAsync(new byte[1], SocketFlags.None, timeout.Token);
        });
        Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
    }

    /// <summary>Sends back whatever it receives, and closes when the peer does.</summary>
    sealed class EchoServer : IDisposable
    {
        readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);

        public EchoServer()
        {
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listener.Listen();
            _ = ServeAsync();
        }

        public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndPoint!;

        async Task ServeAsync()
        {
            using var connection = await _listener.AcceptAsync();
            var buffer = new byte[65536];
            int read;
            while ((read = await connection.ReceiveAsync(buffer)) > 0)
            {
                for (var sent = 0; sent < read;)
                {
                    sent += await connection.SendAsync(buffer.AsMemory(sent, read - sent));
                }
            }

            connection.Shutdown(SocketShutdown.Send);
        }

        public void Dispose() => _listener.Dispose();
    }
}
