using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// Writers hammer one qcow2 image at once. Writer <c>w</c> owns the 512-byte sectors whose index is
/// <c>w</c> modulo the number of writers, so every cluster is shared by all of them: first writes to a
/// cluster race to allocate it, partial writes race their copy-on-write, zeroing and reads go on
/// meanwhile. Each writer keeps a model of its own sectors, which the image must match at every read and
/// at the end; <c>qemu-img check</c> must find the image clean.
/// </summary>
public sealed class Qcow2ConcurrencyTests
{
    const int Sector = 512;

    [SkippableTheory]
    [InlineData(512, 256 << 10, false)]
    [InlineData(4096, 1 << 20, false)]
    [InlineData(4096, 1 << 20, true)]
    [InlineData(65536, 2 << 20, true)]
    public async Task Writers_sharing_every_cluster_lose_nothing(int clusterSize, long size, bool withBacking)
    {
        ExternalTool.Require("qemu-img");
        await Seeds.RunAsync(Seeds.Range(30), async seed =>
        {
            using var dir = TempDirectory.InMemory("blockmirror-qcow2-race-");
            var path = dir.File("race.qcow2");
            var initial = new byte[size];
            string? backing = null;
            if (withBacking)
            {
                // The backing file's bytes are what copy-on-write must carry into partly written clusters.
                backing = dir.File("base.raw");
                new Random(seed + 1000).NextBytes(initial);
                await File.WriteAllBytesAsync(backing, initial);
            }

            Qcow2Create.Create(path, new Qcow2CreateOptions { Size = size, ClusterSize = clusterSize, BackingFile = backing is null ? null : "base.raw", BackingFormat = backing is null ? null : "raw" });
            var writers = 6;
            var expected = (byte[])initial.Clone();
            await using (var graph = new BlockGraph())
            {
                var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", Discard: FileDiscardMode.Unmap));
                var disk = graph.AttachRoot(node, new RootParent("race"));
                await Task.WhenAll(Enumerable.Range(0, writers).Select(w => Task.Run(() => WriterAsync(disk, w, writers, seed, expected))));
                await disk.FlushAsync();
                var all = new byte[size];
                await disk.ReadAsync(0, all);
                AssertSame(expected, all, "after all writers");
            }

            var check = await ExternalTool.RunAsync("qemu-img", ["check", "-f", "qcow2", path]);
            Assert.True(check.ExitCode == 0, $"qemu-img check exited {check.ExitCode}:\n{check.StandardOutput}{check.StandardError}");
            var raw = dir.File("expected.raw");
            await File.WriteAllBytesAsync(raw, expected);
            await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "qcow2", "-F", "raw", path, raw);
        });
    }

    /// <summary>Writes, zeroes and reads back random runs of this writer's sectors.</summary>
    static async Task WriterAsync(NodeEdge disk, int writer, int writers, int seed, byte[] expected)
    {
        var random = new Random(seed * 31 + writer);
        var sectors = expected.Length / Sector;
        var data = new byte[Sector];
        var check = new byte[Sector];
        for (var step = 0; step < 150; step++)
        {
            // A run of up to 8 of this writer's sectors, each a separate request, issued together.
            var first = random.Next(sectors / writers) * writers + writer;
            var count = random.Next(1, 9);
            var roll = random.Next(10);
            var requests = new List<Task>();
            for (var i = 0; i < count; i++)
            {
                var sector = first + i * writers;
                if (sector >= sectors)
                {
                    break;
                }

                var offset = (long)sector * Sector;
                if (roll < 7)
                {
                    var bytes = new byte[Sector];
                    random.NextBytes(bytes);
                    lock (expected)
                    {
                        bytes.CopyTo(expected, offset);
                    }

                    requests.Add(disk.WriteAsync(offset, bytes).AsTask());
                }
                else if (roll < 9)
                {
                    lock (expected)
                    {
                        Array.Clear(expected, (int)offset, Sector);
                    }

                    requests.Add(disk.WriteZeroesAsync(offset, Sector, random.Next(2) == 0 ? RequestFlags.MayUnmap : RequestFlags.None).AsTask());
                }
            }

            await Task.WhenAll(requests);
            for (var i = 0; i < count; i++)
            {
                var sector = first + i * writers;
                if (sector >= sectors)
                {
                    break;
                }

                await disk.ReadAsync((long)sector * Sector, check);
                lock (expected)
                {
                    expected.AsSpan(sector * Sector, Sector).CopyTo(data);
                }

                AssertSame(data, check, $"writer {writer}, sector {sector}");
            }
        }
    }

    static void AssertSame(byte[] expected, byte[] actual, string where)
    {
        var index = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(index == expected.Length, $"{where}: byte {index} reads 0x{(index < actual.Length ? actual[index] : 0):x2}, expected 0x{(index < expected.Length ? expected[index] : 0):x2}");
    }
}
