using System.Text;
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
