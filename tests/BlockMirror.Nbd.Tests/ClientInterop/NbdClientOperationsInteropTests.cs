using System.Text.Json;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Client;
using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests.ClientInterop;

/// <summary>
/// Our NBD client (driver=nbd, through a node) against the real servers: every operation, the result checked
/// by qemu-img against a model of what was written and, for a file-backed export, against the file itself;
/// block status compared with what qemu-img map reads from the same server.
/// </summary>
public sealed class NbdClientOperationsInteropTests
{
    const long Size = 8 << 20;
    const int MiB = 1 << 20;

    [SkippableTheory]
    [MemberData(nameof(NbdTestServer.Kinds), MemberType = typeof(NbdTestServer))]
    public async Task Every_operation_lands_and_block_status_agrees_with_qemu_img_map(string kind)
    {
        await using var server = await NbdTestServer.StartAsync(kind, Size);
        var model = new byte[Size];
        List<(long Offset, long Length, bool Zero)> ours;
        await using (var graph = new BlockGraph())
        {
            var node = await server.OpenAsync(graph);
            var export = ((NbdClientDriver)node.Driver).Export;
            Assert.Equal((ulong)Size, export.Size);
            Assert.True(export.Structured, "structured replies were not agreed");
            Assert.NotNull(export.AllocationContext);

            await WriteAsync(node, model, 0, 64 << 10, 0x11);
            await WriteAsync(node, model, MiB, 4096, 0x22, RequestFlags.Fua);

            // Zeroes kept allocated (NO_HOLE) inside data, and zeroes that may become a hole.
            await WriteAsync(node, model, 2 * MiB, MiB, 0x33);
            await node.WriteZeroesAsync(2 * MiB + (256 << 10), 256 << 10);
            model.AsSpan(2 * MiB + (256 << 10), 256 << 10).Clear();
            await WriteAsync(node, model, 3 * MiB, MiB, 0x44);
            await node.WriteZeroesAsync(3 * MiB, MiB, RequestFlags.MayUnmap);
            model.AsSpan(3 * MiB, MiB).Clear();

            // Fast zeroes: done when the server promises them, refused without touching the data when not.
            await WriteAsync(node, model, 4 * MiB, MiB, 0x55);
            if (export.Has(NbdTransmissionFlags.SendFastZero))
            {
                await node.WriteZeroesAsync(4 * MiB, MiB, RequestFlags.MayUnmap | RequestFlags.NoFallback);
                model.AsSpan(4 * MiB, MiB).Clear();
            }
            else
            {
                var refused = await Assert.ThrowsAsync<BlockIOException>(async () => await node.WriteZeroesAsync(4 * MiB, MiB, RequestFlags.NoFallback));
                Assert.Equal(BlockErrno.ENOTSUP, refused.Errno);
            }

            await WriteAsync(node, model, 5 * MiB, MiB, 0x66);
            await node.DiscardAsync(5 * MiB, MiB);
            model.AsSpan(5 * MiB, MiB).Clear();
            await node.FlushAsync();

            var back = new byte[Size];
            await node.ReadAsync(0, back);
            Assert.True(model.AsSpan().SequenceEqual(back), "what our client reads back differs from what it wrote");
            ours = await ZeroMapAsync(node);
        }

        // Two things hold whatever the server: written data is data, zeroes that may unmap read as zero.
        Assert.False(IsZero(ours, 0, 64 << 10));
        Assert.True(IsZero(ours, 3 * MiB, MiB));
        Assert.Equal(ZeroGranules(await QemuImgMapAsync(server.Uri)), ZeroGranules(ours));

        await server.AssertHoldsAsync(model);
    }

    /// <summary>The FUA, NO_HOLE and FAST_ZERO flags reach the server as asked (nbdkit's log filter shows each request's flags).</summary>
    [SkippableFact]
    public async Task Request_flags_reach_the_server()
    {
        var log = Path.Combine(Path.GetTempPath(), $"blockmirror-nbdkit-log-{Guid.NewGuid():N}.log");
        try
        {
            await using (var server = await NbdTestServer.StartAsync($"nbdkit-memory --filter=log logfile={log}", Size))
            await using (var graph = new BlockGraph())
            {
                var node = await server.OpenAsync(graph);
                await node.WriteAsync(0, new byte[4096], RequestFlags.Fua);
                await node.WriteAsync(4096, new byte[4096]);
                await node.WriteZeroesAsync(MiB, MiB);
                await node.WriteZeroesAsync(2 * MiB, MiB, RequestFlags.MayUnmap | RequestFlags.Fua);
                await node.WriteZeroesAsync(3 * MiB, MiB, RequestFlags.MayUnmap | RequestFlags.NoFallback);
            }

            var requests = (await File.ReadAllLinesAsync(log))
                .Where(l => l.Contains(" Write id=", StringComparison.Ordinal) || l.Contains(" Zero id=", StringComparison.Ordinal)).ToList();
            Assert.Equal(5, requests.Count);
            Assert.Contains("offset=0x0 count=0x1000 fua=1", requests[0], StringComparison.Ordinal);
            Assert.Contains("offset=0x1000 count=0x1000 fua=0", requests[1], StringComparison.Ordinal);
            Assert.Contains("offset=0x100000 count=0x100000 trim=0 fua=0 fast=0", requests[2], StringComparison.Ordinal);
            Assert.Contains("offset=0x200000 count=0x100000 trim=1 fua=1 fast=0", requests[3], StringComparison.Ordinal);
            Assert.Contains("offset=0x300000 count=0x100000 trim=1 fua=0 fast=1", requests[4], StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(log);
        }
    }

    static async Task WriteAsync(BlockNode node, byte[] model, long offset, int length, byte value, RequestFlags flags = RequestFlags.None)
    {
        var data = new byte[length];
        Array.Fill(data, value);
        await node.WriteAsync(offset, data, flags);
        data.CopyTo(model, offset);
    }

    /// <summary>The node's block status over the whole export: which ranges read as zeroes.</summary>
    internal static async Task<List<(long Offset, long Length, bool Zero)>> ZeroMapAsync(BlockNode node)
    {
        var map = new List<(long, long, bool)>();
        for (var offset = 0L; offset < node.Length;)
        {
            var status = await node.GetBlockStatusAsync(offset, node.Length - offset);
            Assert.True(status.Length > 0, $"block status at {offset} covered nothing");
            map.Add((offset, status.Length, status.IsZero));
            offset += status.Length;
        }

        return map;
    }

    /// <summary>qemu-img map of an export: which ranges read as zeroes.</summary>
    internal static async Task<List<(long Offset, long Length, bool Zero)>> QemuImgMapAsync(string uri)
    {
        using var map = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", "raw", uri));
        return [.. map.RootElement.EnumerateArray().Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("zero").GetBoolean()))];
    }

    static bool IsZero(List<(long Offset, long Length, bool Zero)> map, long offset, long length) =>
        map.Where(e => e.Offset < offset + length && e.Offset + e.Length > offset).All(e => e.Zero);

    /// <summary>Per 64 KiB of the export: does all of it read as zeroes? (Servers report extents at their own granularity.)</summary>
    static bool[] ZeroGranules(List<(long Offset, long Length, bool Zero)> map) =>
        [.. Enumerable.Range(0, (int)(Size / (64 << 10))).Select(i => IsZero(map, i * (64L << 10), 64 << 10))];
}
