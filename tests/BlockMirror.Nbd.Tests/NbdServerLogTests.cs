using System.Net.Sockets;
using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// What the NBD server logs: each refused request at debug level with what was refused and why, each connection's
/// end with the reason (EOF, reset, a protocol error, a refusal in the handshake), exports as they come and go.
/// Driven by the raw client, the log read in process.
/// </summary>
public sealed class NbdServerLogTests
{
    const long Size = 1 << 20;

    [Fact]
    public async Task A_refused_request_is_logged_at_debug_with_the_command_range_errno_and_reason()
    {
        var log = new LogCollector();
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false, log: log);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);

        await client.SendRequestAsync(NbdCommand.Read, Size - 512, 1024, cookie: 1);
        Assert.Equal((NbdError.EINVAL, 1UL), await client.ReadSimpleReplyAsync());
        await client.SendRequestAsync(NbdCommand.Write, 0, 512, cookie: 2, payload: new byte[512]);
        Assert.Equal((NbdError.EPERM, 2UL), await client.ReadSimpleReplyAsync());
        await client.SendRequestAsync((NbdCommand)42, 0, 512, cookie: 3);
        Assert.Equal((NbdError.EINVAL, 3UL), await client.ReadSimpleReplyAsync());

        var refused = log.Records.Where(r => r.EventName == "nbd_request_refused").ToList();
        Assert.Equal(3, refused.Count);
        Assert.All(refused, r => Assert.Equal(LogLevel.Debug, r.Level));
        Assert.Contains($"Read offset {Size - 512} length 1024 refused with EINVAL: request [{Size - 512}, +1024) runs past the end of the export ({Size} bytes)", refused[0].Message, StringComparison.Ordinal);
        Assert.Contains("Write offset 0 length 512 refused with EPERM: export 'disk' is read-only", refused[1].Message, StringComparison.Ordinal);
        Assert.Contains("refused with EINVAL: unknown command 42", refused[2].Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Refused_requests_cost_no_log_entry_when_debug_is_off()
    {
        var log = new LogCollector(LogLevel.Information);
        await using var nbd = await NbdFixture.StartAsync(Size, log: log);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);

        await client.SendRequestAsync(NbdCommand.Read, Size, 512, cookie: 1);
        Assert.Equal((NbdError.EINVAL, 1UL), await client.ReadSimpleReplyAsync());

        Assert.DoesNotContain(log.Records, r => r.EventName == "nbd_request_refused");
        Assert.Contains(log.Records, r => r.EventName == "nbd_client_export");
    }

    [Fact]
    public async Task A_refused_option_is_logged_at_debug()
    {
        var log = new LogCollector();
        await using var nbd = await NbdFixture.StartAsync(Size, log: log);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);

        await client.SendOptionAsync((NbdOption)99, []);
        Assert.Equal(NbdOptionReply.ErrUnsupported, (await client.ReadOptionReplyAsync()).Reply);

        var refused = await log.WaitForAsync("nbd_option_refused");
        Assert.Equal(LogLevel.Debug, refused.Level);
        Assert.Contains("option 99 refused with ErrUnsupported: option 99 is not supported", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_client_that_closes_in_the_middle_of_the_handshake_is_logged_as_dropped_by_eof()
    {
        var log = new LogCollector();
        await using var nbd = await NbdFixture.StartAsync(Size, log: log);
        var client = await RawNbdClient.ConnectAsync(nbd.Port);
        // Half an option header, then gone.
        await client.WriteAsync(RawNbdClient.Option(NbdOption.Go, [])[..6]);
        await client.DisposeAsync();

        var dropped = await log.WaitForAsync("nbd_client_dropped");
        Assert.Equal(LogLevel.Warning, dropped.Level);
        Assert.Matches(@"^client #1 \(127\.0\.0\.1:\d+\) dropped in the handshake: EOF: ", dropped.Message);
    }

    [Fact]
    public async Task A_client_that_resets_the_connection_is_logged_as_dropped_by_a_reset()
    {
        var log = new LogCollector();
        await using var nbd = await NbdFixture.StartAsync(Size, log: log);
        var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);
        // A read the server answers with data it then cannot send (nobody reads it), and a reset.
        await client.SendRequestAsync(NbdCommand.Read, 0, 512 << 10, cookie: 1);
        client.Abort();

        var dropped = await log.WaitForAsync(r => r.EventName is "nbd_client_dropped" or "nbd_client_disconnected");
        Assert.Equal("nbd_client_dropped", dropped.EventName);
        Assert.True(dropped.Message.EndsWith("dropped in transmission: connection reset by the client", StringComparison.Ordinal), dropped.Message);
    }

    [Fact]
    public async Task A_client_gone_without_nbd_cmd_disc_and_one_that_breaks_the_protocol_are_told_apart()
    {
        var log = new LogCollector();
        await using var nbd = await NbdFixture.StartAsync(Size, log: log);
        var gone = await RawNbdClient.ConnectAsync(nbd.Port);
        await gone.GoAsync(NbdFixture.ExportName);
        await gone.DisposeAsync();
        var eof = await log.WaitForAsync(r => r.EventName == "nbd_client_dropped" && r.Message.StartsWith("client #1 ", StringComparison.Ordinal));
        Assert.EndsWith("dropped in transmission: EOF without NBD_CMD_DISC", eof.Message, StringComparison.Ordinal);

        await using var broken = await RawNbdClient.ConnectAsync(nbd.Port);
        await broken.GoAsync(NbdFixture.ExportName);
        await broken.SendRequestAsync(NbdCommand.Read, 0, 512, magic: 0xdeadbeef);
        Assert.True(await broken.IsClosedByServerAsync());
        var protocol = await log.WaitForAsync(r => r.EventName == "nbd_client_dropped" && r.Message.StartsWith("client #2 ", StringComparison.Ordinal));
        Assert.EndsWith("dropped in transmission: protocol error: request magic 0xdeadbeef instead of 0x25609513", protocol.Message, StringComparison.Ordinal);

        await using var polite = await RawNbdClient.ConnectAsync(nbd.Port);
        await polite.GoAsync(NbdFixture.ExportName);
        await polite.SendRequestAsync(NbdCommand.Disconnect, 0, 0);
        var disconnected = await log.WaitForAsync("nbd_client_disconnected");
        Assert.Equal((LogLevel.Information, "client #3 (127.0.0.1:"), (disconnected.Level, disconnected.Message[..21]));
        Assert.EndsWith("disconnected: NBD_CMD_DISC", disconnected.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_client_refused_in_the_handshake_is_logged_with_why_and_a_newline_in_its_export_name_stays_in_the_entry()
    {
        var log = new LogCollector();
        await using var nbd = await NbdFixture.StartAsync(Size, log: log);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.SendOptionAsync(NbdOption.ExportName, "no\nsuch"u8.ToArray());
        Assert.True(await client.IsClosedByServerAsync());

        var refused = await log.WaitForAsync("nbd_client_refused");
        Assert.Equal(LogLevel.Warning, refused.Level);
        Assert.EndsWith("refused in the handshake: NBD_OPT_EXPORT_NAME of an unknown export 'no\nsuch'", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Exports_and_connections_are_logged_at_information()
    {
        var log = new LogCollector();
        await using (var nbd = await NbdFixture.StartAsync(Size, log: log))
        {
            await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
            await client.GoAsync(NbdFixture.ExportName, structured: true);
            await log.WaitForAsync("nbd_client_export");
        }

        var events = log.Records.Where(r => r.Level == LogLevel.Information).Select(r => r.EventName).ToList();
        Assert.Equal(["nbd_server_started", "nbd_export_added", "nbd_client_connected", "nbd_client_export"], events.Take(4));
        Assert.Contains("nbd_server_stopped", events);
        Assert.Contains(log.Records, r => r.EventName == "nbd_export_added" && r.Message == "export 'exp0' added: name 'disk', node 'disk', writable");
        Assert.Contains(log.Records, r => r.EventName == "nbd_client_export" && r.Message.EndsWith("opened export 'disk' (structured replies)", StringComparison.Ordinal));
    }
}
