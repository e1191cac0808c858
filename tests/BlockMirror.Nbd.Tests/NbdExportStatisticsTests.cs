using BlockMirror.Block.Io;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// What an export counts of its clients' requests (for the metrics): requests and bytes per command, and
/// the requests answered with an error; the exported node counts the same requests as block requests.
/// </summary>
public sealed class NbdExportStatisticsTests
{
    const long Size = 1 << 20;

    [Fact]
    public async Task The_export_counts_each_command_its_bytes_and_the_errors_and_the_node_counts_what_reached_it()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);

        async Task Expect(NbdError error, NbdCommand command, ulong offset, uint length, byte[]? payload = null)
        {
            await client.SendRequestAsync(command, offset, length, payload: payload);
            if (command == NbdCommand.Read && error == NbdError.None)
            {
                Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);
                await client.ReadAsync((int)length);
                return;
            }

            Assert.Equal(error, (await client.ReadSimpleReplyAsync()).Error);
        }

        await Expect(NbdError.None, NbdCommand.Write, 0, 8192, new byte[8192]);
        await Expect(NbdError.None, NbdCommand.Write, 65536, 512, new byte[512]);
        await Expect(NbdError.None, NbdCommand.Read, 0, 4096);
        await Expect(NbdError.None, NbdCommand.WriteZeroes, 131072, 65536);
        await Expect(NbdError.None, NbdCommand.Trim, 262144, 65536);
        await Expect(NbdError.None, NbdCommand.Flush, 0, 0);
        await Expect(NbdError.EINVAL, NbdCommand.Read, Size - 512, 4096);

        var s = nbd.Server.Exports.Single().Statistics;
        Assert.Equal(2, s.Requests(NbdCommand.Write));
        Assert.Equal(8192 + 512, s.Bytes(NbdCommand.Write));
        Assert.Equal(2, s.Requests(NbdCommand.Read));
        Assert.Equal(4096 + 4096, s.Bytes(NbdCommand.Read)); // the refused read's length counts as asked
        Assert.Equal(1, s.Requests(NbdCommand.WriteZeroes));
        Assert.Equal(65536, s.Bytes(NbdCommand.WriteZeroes));
        Assert.Equal(1, s.Requests(NbdCommand.Trim));
        Assert.Equal(1, s.Requests(NbdCommand.Flush));
        Assert.Equal(0, s.Bytes(NbdCommand.Flush));
        Assert.Equal(1, s.Errors);

        // The refused read never reached the node; the rest did, once each.
        var node = nbd.Node.Statistics;
        Assert.Equal(1, node.Operations(BlockOperation.Read));
        Assert.Equal(4096, node.Bytes(BlockOperation.Read));
        Assert.Equal(2, node.Operations(BlockOperation.Write));
        Assert.Equal(8192 + 512, node.Bytes(BlockOperation.Write));
        Assert.Equal(65536, node.Bytes(BlockOperation.WriteZeroes));
        Assert.Equal(1, node.Operations(BlockOperation.Flush));
        Assert.Equal(0, node.Invalid(BlockOperation.Read));
    }
}
