using System.Collections.Concurrent;
using BlockMirror.Block.Graph;
using BlockMirror.Nbd.Client;
using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests.Client;

/// <summary>
/// A server's block sizes, both ways. What goes on the wire: writes, reads and write-zeroes are cut to its
/// maximum and aligned to its minimum, a trim is sent whole (QEMU 7.2's client limits, which the NBD spec
/// allows). What comes back: block status that ends inside a block is cut back to whole blocks, or read as data.
/// A scripted server records every request and answers it.
/// </summary>
public sealed class NbdClientBlockSizeTests : IDisposable
{
    const int Maximum = 64 << 10;

    readonly TempDirectory _dir = new("blockmirror-nbd-sizes-");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task Requests_keep_to_the_servers_maximum_except_trim()
    {
        var seen = new ConcurrentQueue<NbdRequest>();
        await using var server = new FakeNbdServer(_dir.File("s.sock"), async s =>
        {
            await s.HandshakeAsync(4 << 20, FakeNbdSession.ExportInfo(4 << 20, FakeNbdSession.AllCommands), FakeNbdSession.BlockSizeInfo(512, 4096, Maximum));
            while (true)
            {
                var request = await s.ReadRequestAsync();
                if (request.Command == NbdCommand.Disconnect)
                {
                    return;
                }

                seen.Enqueue(request);
                if (request.Command == NbdCommand.Read)
                {
                    await s.ChunkAsync(request.Cookie, NbdChunkType.OffsetHole, [.. NbdBytes.U64(request.Offset), .. NbdBytes.U32(request.Length)]);
                }
                else
                {
                    await s.SimpleReplyAsync(request.Cookie);
                }
            }
        });
        await using (var graph = new BlockGraph())
        {
            var node = await NbdClientDriver.OpenAsync(graph, "nbd0", new NbdClientOptions(new NbdServerAddress { UnixPath = server.SocketPath }), false, CancellationToken.None);
            await node.WriteAsync(0, new byte[300 << 10]);
            await node.ReadAsync(1 << 20, new byte[200 << 10]);
            await node.WriteZeroesAsync(2 << 20, 1 << 20);
            await node.DiscardAsync(1 << 20, 2 << 20);
            // Unaligned: the node reads the partial blocks around it and writes whole ones.
            await node.WriteAsync(3 << 20 | 100, new byte[1000]);
        }

        Assert.Empty(server.ScriptErrors);
        var requests = seen.ToList();
        Assert.All(requests, r => Assert.True(r.Offset % 512 == 0 && r.Length % 512 == 0, $"{r.Command} at {r.Offset} length {r.Length} is not aligned to 512"));
        Assert.All(requests.Where(r => r.Command != NbdCommand.Trim), r => Assert.True(r.Length <= Maximum, $"{r.Command} of {r.Length} bytes"));
        Assert.Equal(300L << 10, requests.Where(r => r.Command == NbdCommand.Write && r.Offset < 1 << 20).Sum(r => r.Length));
        Assert.Equal(200L << 10, requests.Where(r => r.Command == NbdCommand.Read && r.Offset < 2 << 20).Sum(r => r.Length));
        Assert.Equal(1L << 20, requests.Where(r => r.Command == NbdCommand.WriteZeroes).Sum(r => r.Length));
        var trim = Assert.Single(requests, r => r.Command == NbdCommand.Trim);
        Assert.Equal((1UL << 20, 2u << 20), (trim.Offset, trim.Length));
        Assert.Contains(requests, r => r.Command == NbdCommand.Write && r.Offset == 3 << 20 && r.Length == 1536);
    }

    [Theory]
    [InlineData(100u, false, 512L)]
    [InlineData(700u, true, 512L)]
    [InlineData(1024u, true, 1024L)]
    public async Task Block_status_that_ends_inside_a_block_is_cut_back_or_read_as_data(uint extent, bool zero, long length)
    {
        await using var server = new FakeNbdServer(_dir.File("b.sock"), async s =>
        {
            await s.HandshakeAsync(1 << 20, FakeNbdSession.ExportInfo(1 << 20, FakeNbdSession.AllCommands), FakeNbdSession.BlockSizeInfo(512, 4096, Maximum));
            var request = await s.ReadRequestAsync();
            Assert.Equal(NbdCommand.BlockStatus, request.Command);
            await s.ChunkAsync(request.Cookie, NbdChunkType.BlockStatus,
                [.. NbdBytes.U32(FakeNbdSession.ContextId), .. NbdBytes.U32(extent), .. NbdBytes.U32((uint)(NbdAllocationState.Hole | NbdAllocationState.Zero))]);
            await s.ReadRequestAsync();
        });
        await using var graph = new BlockGraph();
        var node = await NbdClientDriver.OpenAsync(graph, "nbd0", new NbdClientOptions(new NbdServerAddress { UnixPath = server.SocketPath }), false, CancellationToken.None);

        var status = await node.GetBlockStatusAsync(0, 4096);

        Assert.Equal((zero, !zero, length), (status.IsZero, status.IsData, status.Length));
        Assert.Empty(server.ScriptErrors);
    }

    /// <summary>Block sizes QEMU 7.2's client accepts open here too: a small preferred size, a maximum that is no multiple of the minimum.</summary>
    [Fact]
    public async Task Block_sizes_qemu_accepts_are_accepted()
    {
        await using var server = new FakeNbdServer(_dir.File("q.sock"), async s =>
        {
            await s.HandshakeAsync(1 << 20, FakeNbdSession.ExportInfo(1 << 20, FakeNbdSession.AllCommands), FakeNbdSession.BlockSizeInfo(512, 512, 100_000));
            await s.ReadRequestAsync();
        });
        await using var graph = new BlockGraph();

        var node = await NbdClientDriver.OpenAsync(graph, "nbd0", new NbdClientOptions(new NbdServerAddress { UnixPath = server.SocketPath }), false, CancellationToken.None);

        Assert.Equal((512, 65536), (node.Driver.Limits.RequestAlignment, node.Driver.Limits.MaxTransfer));
        Assert.Empty(server.ScriptErrors);
    }
}
