using System.Text;
using System.Text.Json.Nodes;
using BlockMirror.Qmp.Events;
using BlockMirror.Qmp.Server;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// A client that sends commands and does not read the replies: the daemon stops reading it once its
/// unsent output passes the bound, so its memory stays bounded; when the client reads again, every reply
/// comes, in order.
/// </summary>
public sealed class QmpBackpressureTests
{
    const int Commands = 200_000;

    [Fact]
    public async Task A_client_that_does_not_read_its_replies_is_not_read_either()
    {
        await using var monitor = new MonitorHarness("backpressure");
        var server = monitor.Server;
        await using var client = await QmpClient.ConnectAsync(monitor.SocketPath);

        // 200,000 commands (5 MB in, 20 MB of replies out), sent without reading anything.
        var command = Encoding.ASCII.GetBytes("""{"execute": "query-version"}""" + "\n");
        var batch = Enumerable.Range(0, 1000).SelectMany(_ => command).ToArray();
        var sending = Task.Run(async () =>
        {
            for (var i = 0; i < Commands / 1000; i++)
            {
                await client.SendRawAsync(batch);
            }
        });

        // Read only once all is sent, or once the daemon has more unsent output than it lets a client
        // leave unread (then, if it stopped reading, the sender is stuck until we read).
        while (!sending.IsCompleted && server.PeakBacklog <= QmpSession.MaxBacklogBytes)
        {
            await Task.Delay(10);
        }

        for (var i = 0; i < Commands; i++)
        {
            var reply = await client.ReadObjectAsync(TimeSpan.FromSeconds(30));
            Assert.True(reply.ContainsKey("return"), reply.ToJsonString());
        }

        await sending;
        // Without the bound the daemon reads all 200,000 commands at once and queues ~20 MB of replies.
        var largestReply = Encoding.UTF8.GetByteCount("""{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "BlockMirror"}}""") + 2;
        Assert.InRange(server.PeakBacklog, 0, QmpSession.MaxBacklogBytes + largestReply);
    }

    [Fact]
    public async Task A_client_that_leaves_its_events_unread_is_disconnected_and_one_that_reads_gets_them_all()
    {
        await using var monitor = new MonitorHarness("unread-events");
        var server = monitor.Server;
        await using var idle = await QmpClient.ConnectAsync(monitor.SocketPath);
        await using var reader = await QmpClient.ConnectAsync(monitor.SocketPath);

        // What a mirror with on-source-error=ignore sends on a disk whose reads all fail: twice the limit's
        // worth, in batches the reading client keeps up with.
        var e = new QmpEvent("BLOCK_JOB_ERROR", new JsonObject { ["device"] = "job0", ["operation"] = "read", ["action"] = "ignore" }, DateTimeOffset.UtcNow);
        var size = QmpSession.Serialize(writer => e.Data.WriteTo(writer)).Length + 64;
        const int Batch = 5000;
        var total = (int)(2L * QmpSession.MaxUnreadBytes / size / Batch + 1) * Batch;
        var received = 0;
        var reading = Task.Run(async () =>
        {
            for (var i = 0; i < total; i++)
            {
                var e = await reader.ReadObjectAsync(TimeSpan.FromSeconds(30));
                Assert.Equal("BLOCK_JOB_ERROR", (string?)e["event"]);
                Interlocked.Increment(ref received);
            }
        });

        for (var sent = 0; sent < total;)
        {
            for (var i = 0; i < Batch; i++)
            {
                server.Broadcast(e);
            }

            sent += Batch;
            while (Volatile.Read(ref received) < sent)
            {
                Assert.False(reading.IsCompleted, $"the reading client stopped after {received} events: {reading.Exception}");
                await Task.Delay(5);
            }
        }

        await reading;
        // Without the limit the idle client's queue holds all of it.
        Assert.InRange(server.PeakBacklog, QmpSession.MaxUnreadBytes / 2, QmpSession.MaxUnreadBytes);

        // The idle client gets what was in the socket when it was dropped, then the end of the stream.
        var before = 0;
        await Assert.ThrowsAsync<EndOfStreamException>(async () =>
        {
            while (true)
            {
                await idle.ReadObjectAsync(TimeSpan.FromSeconds(30));
                before++;
            }
        });
        Assert.InRange(before, 1, total - 1);

        // The daemon carries on: the reader is still served, and a new client too.
        Assert.NotNull(await reader.ExecuteAsync("query-version"));
        await using var next = await QmpClient.ConnectAsync(monitor.SocketPath);
        Assert.NotNull(await next.ExecuteAsync("query-version"));
    }

    [Fact]
    public async Task A_client_that_never_reads_does_not_hold_up_the_shutdown()
    {
        var monitor = new MonitorHarness("backpressure-shutdown");
        await using var client = await QmpClient.ConnectAsync(monitor.SocketPath);
        var command = Encoding.ASCII.GetBytes("""{"execute": "query-version"}""" + "\n");
        var batch = Enumerable.Range(0, 1000).SelectMany(_ => command).ToArray();
        var sending = Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    await client.SendRawAsync(batch);
                }
            }
            catch (IOException)
            {
                // The daemon closed the connection.
            }
        });
        while (monitor.Server.PeakBacklog <= QmpSession.MaxBacklogBytes)
        {
            await Task.Delay(10);
        }

        // The session's writer is blocked on the client: closing the server must end it, not wait for it.
        await monitor.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(60));
        await sending.WaitAsync(TimeSpan.FromSeconds(60));
    }
}
