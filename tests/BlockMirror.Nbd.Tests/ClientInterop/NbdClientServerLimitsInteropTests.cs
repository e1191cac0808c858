using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Client;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Tests.ClientInterop;

/// <summary>
/// Our client against servers that ask for more or offer less: block sizes the client must keep to (nbdkit's
/// blocksize-policy filter refusing, with EINVAL, anything misaligned or too large), and servers without
/// structured replies, without write-zeroes or without base:allocation. Whatever the server, requests of any
/// alignment and size through the node land as a model says.
/// </summary>
public sealed class NbdClientServerLimitsInteropTests
{
    const long Size = 4 << 20;

    [SkippableTheory]
    [InlineData(512, 1)]
    [InlineData(4096, 2)]
    public async Task Unaligned_requests_through_the_node_keep_to_the_servers_block_sizes(int minimum, int seed)
    {
        const int Maximum = 128 << 10;
        await using var server = await NbdTestServer.StartAsync(
            $"nbdkit-memory --filter=blocksize-policy blocksize-error-policy=error blocksize-minimum={minimum} blocksize-preferred=65536 blocksize-maximum={Maximum}", Size);
        var model = new byte[Size];
        await using (var graph = new BlockGraph())
        {
            var node = await server.OpenAsync(graph);
            var driver = (NbdClientDriver)node.Driver;
            Assert.Equal(((uint)minimum, 65536u, (uint)Maximum), (driver.Export.MinimumBlock, driver.Export.PreferredBlock, driver.Export.MaximumBlock));
            Assert.Equal(minimum, driver.Limits.RequestAlignment);

            await RandomOperationsAsync(node, model, seed, count: 150);
        }

        await server.AssertHoldsAsync(model);
    }

    [SkippableTheory]
    [InlineData("nbdkit-memory --no-sr")]
    [InlineData("nbdkit-memory --filter=nozero")]
    [InlineData("nbdkit-memory --filter=noextents")]
    public async Task A_server_that_offers_less_still_gets_every_operation_right(string kind)
    {
        await using var server = await NbdTestServer.StartAsync(kind, Size);
        var model = new byte[Size];
        await using (var graph = new BlockGraph())
        {
            var node = await server.OpenAsync(graph);
            var export = ((NbdClientDriver)node.Driver).Export;
            Assert.Equal(!kind.Contains("--no-sr", StringComparison.Ordinal), export.Structured);
            Assert.Equal(kind.Contains("--filter=nozero", StringComparison.Ordinal), !export.Has(NbdTransmissionFlags.SendWriteZeroes));
            // Without structured replies there is no block status; nbdkit's noextents keeps base:allocation but
            // answers every range as data.
            Assert.Equal(export.Structured, export.AllocationContext is not null);
            var allData = !export.Structured || kind.Contains("--filter=noextents", StringComparison.Ordinal);

            if (!export.Has(NbdTransmissionFlags.SendWriteZeroes))
            {
                // No fast zeroes without write-zeroes: refused, and nothing written.
                await node.WriteAsync(0, new byte[] { 1, 2, 3 });
                var refused = await Assert.ThrowsAsync<BlockIOException>(async () => await node.WriteZeroesAsync(0, 65536, RequestFlags.NoFallback));
                Assert.Equal(BlockErrno.ENOTSUP, refused.Errno);
                model[0] = 1;
                model[1] = 2;
                model[2] = 3;
            }

            await RandomOperationsAsync(node, model, seed: 3, count: 100);

            // Without base:allocation every byte is data (as QEMU's client says): a copy must read it all.
            var map = await NbdClientOperationsInteropTests.ZeroMapAsync(node);
            if (allData)
            {
                Assert.All(map, e => Assert.False(e.Zero));
                var last = await node.GetBlockStatusAsync(Size - 4096, 4096);
                Assert.True(last.IsData && !last.IsZero, $"block status {last}");
            }
        }

        await server.AssertHoldsAsync(model);
    }

    /// <summary>
    /// Writes, FUA writes, write-zeroes with and without may-unmap, discards and reads at random offsets and
    /// lengths up to 300 KiB (beyond the maximum block size, so the node cuts them), each read checked against
    /// the model.
    /// </summary>
    static async Task RandomOperationsAsync(BlockNode node, byte[] model, int seed, int count)
    {
        var random = new Random(seed);
        for (var i = 0; i < count; i++)
        {
            var length = random.Next(4) == 0 ? random.Next(1, 600) : random.Next(1, 300 << 10);
            var offset = random.NextInt64(0, Size - length);
            switch (random.Next(6))
            {
                case 0:
                case 1:
                {
                    var data = new byte[length];
                    random.NextBytes(data);
                    await node.WriteAsync(offset, data, random.Next(3) == 0 ? RequestFlags.Fua : RequestFlags.None);
                    data.CopyTo(model, offset);
                    break;
                }

                case 2:
                    await node.WriteZeroesAsync(offset, length, random.Next(2) == 0 ? RequestFlags.MayUnmap : RequestFlags.None);
                    model.AsSpan((int)offset, length).Clear();
                    break;

                case 3:
                    // A discard only promises that the data may go; the model learns what the server kept.
                    await node.DiscardAsync(offset, length);
                    await node.ReadAsync(offset, model.AsMemory((int)offset, length));
                    break;

                default:
                {
                    var read = new byte[length];
                    await node.ReadAsync(offset, read);
                    Assert.True(model.AsSpan((int)offset, length).SequenceEqual(read), $"read at {offset} length {length} (operation {i}) differs from the model");
                    break;
                }
            }
        }

        await node.FlushAsync();
    }
}
