using System.Globalization;
using System.Security.Cryptography;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Interop.Tests;

/// <summary>
/// qcow2 both ways with the real qemu-img and qemu-io: images they make and write read the same through
/// BlockMirror as through <c>qemu-img convert -O raw</c>; images BlockMirror writes pass <c>qemu-img check</c>
/// with nothing found and <c>qemu-img compare</c> with the expected bytes.
/// </summary>
public sealed class Qcow2InteropTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-qcow2-interop-");

    public void Dispose() => _dir.Dispose();

    static string Text(long value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>qemu-io commands: patterns at many offsets, zero writes (with and without unmap), discards.</summary>
    static List<string> RandomQemuIoCommands(int seed, long size, int clusterSize, int count)
    {
        var random = new Random(seed);
        var commands = new List<string>();
        for (var i = 0; i < count; i++)
        {
            var unit = random.Next(3) == 0 ? clusterSize : 512;
            var length = Math.Min(size, (long)unit * random.Next(1, 9));
            var offset = random.NextInt64(0, (size - length) / 512 + 1) * 512;
            commands.Add(random.Next(10) switch
            {
                < 6 => $"write -P 0x{random.Next(1, 256):x2} {Text(offset)} {Text(length)}",
                6 => $"write -z {Text(offset)} {Text(length)}",
                7 => $"write -z -u {Text(offset)} {Text(length)}",
                _ => $"discard {Text(offset)} {Text(length)}",
            });
        }

        return commands;
    }

    static async Task QemuIoAsync(string path, string format, IEnumerable<string> commands)
    {
        // In batches: one qemu-io run per command would be slow, one run with all of them a long command line.
        foreach (var batch in commands.Chunk(40))
        {
            await ExternalTool.RunCheckedAsync("qemu-io", ["-f", format, .. batch.SelectMany(c => new[] { "-c", c }), path]);
        }
    }

    /// <summary>The guest view of an image as qemu-img sees it.</summary>
    async Task<byte[]> QemuContentAsync(string path)
    {
        var raw = _dir.File($"{Path.GetFileName(path)}.{Guid.NewGuid():N}.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", path, raw);
        var bytes = await File.ReadAllBytesAsync(raw);
        File.Delete(raw);
        return bytes;
    }

    /// <summary>The guest view of an image as BlockMirror sees it (read-only, with its backing chain).</summary>
    static async Task<byte[]> OurContentAsync(string path, string format = "qcow2")
    {
        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, format, ReadOnly: true));
        var bytes = new byte[node.Length];
        for (long offset = 0; offset < bytes.Length; offset += 1 << 20)
        {
            await node.ReadAsync(offset, bytes.AsMemory((int)offset, (int)Math.Min(1 << 20, bytes.Length - offset)));
        }

        return bytes;
    }

    static void AssertSameBytes(byte[] expected, byte[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        var same = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(same == expected.Length, $"{what}: first difference at byte {same}: expected 0x{(same < expected.Length ? expected[same] : 0):x2}, read 0x{(same < actual.Length ? actual[same] : 0):x2}");
    }

    static async Task AssertCleanAsync(string path)
    {
        var check = await ExternalTool.RunAsync("qemu-img", ["check", "-f", "qcow2", path]);
        Assert.True(check.ExitCode == 0, $"qemu-img check exited {check.ExitCode}:\n{check.StandardOutput}{check.StandardError}");
        Assert.Contains("No errors were found on the image.", check.StandardOutput);
    }

    [SkippableTheory]
    [InlineData(512, "1.1", 1)]
    [InlineData(65536, "1.1", 2)]
    [InlineData(2 << 20, "1.1", 3)]
    [InlineData(65536, "0.10", 4)]
    [InlineData(4096, "0.10", 5)]
    public async Task Images_qemu_io_wrote_read_the_same_as_qemu_img_reads_them(int clusterSize, string compat, int seed)
    {
        ExternalTool.Require("qemu-io");
        var size = clusterSize >= 2 << 20 ? 16L << 20 : 4L << 20;
        var path = _dir.File($"qemu-{clusterSize}-{compat}.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-o", $"cluster_size={clusterSize},compat={compat}", path, Text(size));
        await QemuIoAsync(path, "qcow2", RandomQemuIoCommands(seed, size, clusterSize, 120));
        AssertSameBytes(await QemuContentAsync(path), await OurContentAsync(path), $"cluster size {clusterSize}, compat {compat}");
    }

    [SkippableFact]
    public async Task Compressed_clusters_made_by_qemu_img_convert_read_the_same()
    {
        var raw = _dir.File("source.raw");
        var data = new byte[3 << 20];
        var random = new Random(7);
        for (var i = 0; i < data.Length; i += 4096)
        {
            // Text-like runs compress, random ones do not (qemu-img then stores those clusters plainly), holes stay holes.
            switch (i / 4096 % 5)
            {
                case 0: random.NextBytes(data.AsSpan(i, 4096)); break;
                case 1: data.AsSpan(i, 4096).Fill((byte)('a' + i / 4096 % 26)); break;
                case 2: break;
                default: for (var j = 0; j < 4096; j++) { data[i + j] = (byte)(j % 13 + random.Next(2)); } break;
            }
        }

        await File.WriteAllBytesAsync(raw, data);
        foreach (var cluster in new[] { 4096, 65536 })
        {
            var path = _dir.File($"compressed-{cluster}.qcow2");
            await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-c", "-O", "qcow2", "-o", $"cluster_size={cluster}", raw, path);
            var map = await ExternalTool.RunCheckedAsync("qemu-img", "check", "-f", "qcow2", path);
            Assert.DoesNotContain(" 0.00% compressed", map);
            AssertSameBytes(data, await OurContentAsync(path), $"compressed, {cluster}-byte clusters");
        }
    }

    [SkippableFact]
    public async Task Backing_chains_three_deep_read_the_same_and_a_shorter_backing_file_reads_zeroes_past_its_end()
    {
        ExternalTool.Require("qemu-io");
        var basePath = _dir.File("base.qcow2");
        var mid = _dir.File("mid.qcow2");
        var top = _dir.File("top.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", basePath, "3M");
        await QemuIoAsync(basePath, "qcow2", RandomQemuIoCommands(11, 3 << 20, 65536, 60));
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "cluster_size=4096", mid, "4M");
        await QemuIoAsync(mid, "qcow2", RandomQemuIoCommands(12, 4 << 20, 4096, 60));
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", "-o", "cluster_size=512", top, "5M");
        await QemuIoAsync(top, "qcow2", RandomQemuIoCommands(13, 5 << 20, 512, 60));
        AssertSameBytes(await QemuContentAsync(top), await OurContentAsync(top), "three-deep chain");

        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(top, ReadOnly: true));
        Assert.Equal(3, BlockChain.Layers(node).Count());
        Assert.Equal(3L << 20, node.Backing!.Backing!.Length);
    }

    [SkippableFact]
    public async Task A_raw_backing_file_given_without_a_format_is_probed()
    {
        var basePath = _dir.File("base.img");
        var top = _dir.File("top.qcow2");
        var data = new byte[1 << 20];
        new Random(3).NextBytes(data);
        await File.WriteAllBytesAsync(basePath, data);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", top, "1M");

        // Hide the backing format extension (the first one, right after the 112-byte header) behind an
        // unknown type, as images from old QEMU versions lack it: the format must then be probed.
        var bytes = await File.ReadAllBytesAsync(top);
        Assert.Equal(Qcow2Header.ExtensionBackingFormat, System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(112)));
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(112), 0x5a5a5a5a);
        await File.WriteAllBytesAsync(top, bytes);
        var info = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", top);
        Assert.DoesNotContain("backing-filename-format", info);
        AssertSameBytes(data, await OurContentAsync(top), "probed raw backing");
    }

    [SkippableTheory]
    [InlineData(512, 3)]
    [InlineData(65536, 3)]
    [InlineData(65536, 2)]
    public async Task Images_blockmirror_writes_on_a_chain_pass_qemu_img_check_and_compare(int clusterSize, int version)
    {
        var basePath = _dir.File("base.raw");
        var top = _dir.File("top.qcow2");
        var expected = new byte[2 << 20];
        new Random(5).NextBytes(expected.AsSpan(0, 1 << 20));
        await File.WriteAllBytesAsync(basePath, expected[..(1 << 20)]);
        Qcow2Create.Create(top, new Qcow2CreateOptions { Size = expected.Length, ClusterSize = clusterSize, Version = version, BackingFile = "base.raw", BackingFormat = "raw" });

        var random = new Random(clusterSize + version);
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(top));
            for (var i = 0; i < 200; i++)
            {
                var length = random.Next(1, 70) * 512;
                var offset = random.NextInt64(0, (expected.Length - length) / 512 + 1) * 512;
                switch (random.Next(6))
                {
                    case < 4:
                        var bytes = new byte[length];
                        random.NextBytes(bytes);
                        await node.WriteAsync(offset, bytes);
                        bytes.CopyTo(expected, offset);
                        break;
                    case 4:
                        await node.WriteZeroesAsync(offset, length, random.Next(2) == 0 ? RequestFlags.MayUnmap : RequestFlags.None);
                        Array.Clear(expected, (int)offset, length);
                        break;
                    default:
                        // A discard changes whole clusters only; on a chain they read as zeroes only from version 3.
                        await node.DiscardAsync(offset, length);
                        var start = (offset + clusterSize - 1) / clusterSize * clusterSize;
                        var end = (offset + length) / clusterSize * clusterSize;
                        for (var c = start; c < end; c += clusterSize)
                        {
                            if (version >= 3)
                            {
                                Array.Clear(expected, (int)c, clusterSize);
                            }
                            else
                            {
                                // Version 2 has no zero flag: the cluster falls back to the backing file.
                                var from = (int)Math.Min(c, 1 << 20);
                                var to = (int)Math.Min(c + clusterSize, 1 << 20);
                                Array.Clear(expected, (int)c, clusterSize);
                                File.ReadAllBytes(basePath).AsSpan(from, to - from).CopyTo(expected.AsSpan(from));
                            }
                        }

                        break;
                }
            }
        }

        await AssertCleanAsync(top);
        var expectedPath = _dir.File("expected.raw");
        await File.WriteAllBytesAsync(expectedPath, expected);
        await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "qcow2", "-F", "raw", top, expectedPath);
        var info = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", top);
        Assert.Contains("\"backing-filename\": \"base.raw\"", info);
        Assert.Contains("\"backing-filename-format\": \"raw\"", info);
    }

    [SkippableFact]
    public async Task Qemu_io_reads_the_patterns_blockmirror_wrote()
    {
        ExternalTool.Require("qemu-io");
        var path = _dir.File("ours.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 8 << 20 });
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path));
            await node.WriteAsync(0, Enumerable.Repeat((byte)0x11, 65536).ToArray());
            await node.WriteAsync(1_000_448, Enumerable.Repeat((byte)0x22, 1536).ToArray());
            await node.WriteAsync(7 << 20, Enumerable.Repeat((byte)0x33, 1 << 20).ToArray());
            await node.WriteZeroesAsync(7 << 20, 65536, RequestFlags.MayUnmap);
        }

        var output = await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2",
            "-c", "read -P 0x11 0 64k", "-c", "read -P 0x22 1000448 1536", "-c", "read -P 0 1001984 1024",
            "-c", "read -P 0 7M 64k", "-c", "read -P 0x33 7232k 960k", "-c", "read -P 0 64k 128k", path);
        Assert.DoesNotContain("Pattern verification failed", output);
        await AssertCleanAsync(path);
    }

    /// <summary>
    /// With O_DIRECT the file grows in preallocated steps (16, 32, 64 MiB ... ahead of its end) so that data
    /// writes into new clusters run in parallel: 16 writers in flight across several steps, then the data,
    /// <c>qemu-img check</c>, and a file cut back to the image's end on close.
    /// </summary>
    [SkippableTheory]
    [InlineData(65536)]
    [InlineData(4096)] // the smallest cluster O_DIRECT allows: many L2 tables and refcount blocks made mid-growth
    public async Task Parallel_direct_writes_across_file_growth_steps_keep_data_and_close_trims_the_file(int clusterSize)
    {
        // Not in /tmp: it may be a tmpfs, and this is about a disk file system's allocation.
        using var dir = TempDirectory.OnDisk("blockmirror-qcow2-growth-");
        var path = dir.File("grow.qcow2");
        const int Chunk = 1 << 20;
        const int Chunks = 80;
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = (long)Chunk * Chunks, ClusterSize = clusterSize });
        var expected = new byte[(long)Chunk * Chunks];
        new Random(11).NextBytes(expected);
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, Direct: true));
            var next = -1;
            await Task.WhenAll(Enumerable.Range(0, 16).Select(async _ =>
            {
                // Chunks in a scattered order (37 is prime to 80), so allocations interleave with growth.
                for (int i; (i = Interlocked.Increment(ref next)) < Chunks;)
                {
                    var at = (long)(i * 37 % Chunks) * Chunk;
                    await node.WriteAsync(at, expected.AsMemory((int)at, Chunk));
                }
            }));
        }

        await AssertCleanAsync(path);
        var expectedPath = dir.File("expected.raw");
        await File.WriteAllBytesAsync(expectedPath, expected);
        await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "qcow2", "-F", "raw", path, expectedPath);
        var check = await ExternalTool.RunCheckedAsync("qemu-img", "check", "--output=json", path);
        var end = long.Parse(System.Text.RegularExpressions.Regex.Match(check, "\"image-end-offset\": (\\d+)").Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.Equal(end, new FileInfo(path).Length);
    }

    [SkippableFact]
    public async Task Growing_an_image_past_its_l1_table_keeps_data_and_passes_check()
    {
        var path = _dir.File("grow.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = 512 });
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path));
            await node.WriteAsync(4096, Enumerable.Repeat((byte)0x5a, 4096).ToArray());
            await node.TruncateAsync(64 << 20);
            await node.WriteAsync((64 << 20) - 4096, Enumerable.Repeat((byte)0xa5, 4096).ToArray());
            // Shrinking is QEMU's (Cli ResizeShrinkInteropTests); here only the growth is under test.
        }

        await AssertCleanAsync(path);
        var info = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", path);
        Assert.Contains("\"virtual-size\": 67108864", info);
        var output = await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 4k 4k", "-c", "read -P 0xa5 65532k 4k", "-c", "read -P 0 1M 1M", path);
        Assert.DoesNotContain("Pattern verification failed", output);
    }

    [SkippableFact]
    public async Task An_image_qemu_left_dirty_with_lazy_refcounts_is_repaired_when_opened_for_writing()
    {
        ExternalTool.Require("qemu-io");
        var path = _dir.File("dirty.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4096", path, "4M");

        // qemu-io dies by SIGKILL after writing: the dirty bit stays set and the refcounts were never written.
        await ExternalTool.RunAsync("qemu-io", ["-f", "qcow2", "-c", "write -P 0x42 0 256k", "-c", "write -P 0x43 1M 64k", "-c", "sigraise 9", path]);
        var before = await ExternalTool.RunAsync("qemu-img", ["info", "--output=json", path]);
        Assert.Contains("\"dirty-flag\": true", before.StandardOutput);
        var content = await QemuContentAsync(path);

        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path));
            await node.WriteAsync(2 << 20, Enumerable.Repeat((byte)0x44, 8192).ToArray());
            Enumerable.Repeat((byte)0x44, 8192).ToArray().CopyTo(content, 2 << 20);
        }

        await AssertCleanAsync(path);
        var after = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", path);
        Assert.Contains("\"dirty-flag\": false", after);
        AssertSameBytes(content, await QemuContentAsync(path), "after repair and write");
    }

    [SkippableFact]
    public async Task Lazy_refcounts_mark_the_image_dirty_while_open_and_clean_on_close()
    {
        var path = _dir.File("lazy.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 4 << 20, LazyRefcounts = true });
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path));
            await node.WriteAsync(0, new byte[65536]);
            await node.FlushAsync();
            var open = Qcow2Header.Parse(await File.ReadAllBytesAsync(path), path);
            Assert.NotEqual(0UL, open.IncompatibleFeatures & Qcow2Header.IncompatibleDirty);
        }

        var closed = Qcow2Header.Parse(await File.ReadAllBytesAsync(path), path);
        Assert.Equal(0UL, closed.IncompatibleFeatures & Qcow2Header.IncompatibleDirty);
        await AssertCleanAsync(path);
    }

    [SkippableFact]
    public async Task Writing_over_an_internal_snapshot_copies_shared_clusters_and_keeps_the_snapshot()
    {
        ExternalTool.Require("qemu-io");
        var path = _dir.File("snap.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "2M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", "-c", "write -P 0x62 1536k 64k", path);
        await ExternalTool.RunCheckedAsync("qemu-img", "snapshot", "-c", "before", path);
        var snapshot = await QemuContentAsync(path);

        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path));
            await node.WriteAsync(1000, Enumerable.Repeat((byte)0x71, 10000).ToArray());
            await node.WriteZeroesAsync(512 << 10, 64 << 10, RequestFlags.MayUnmap);
            await node.DiscardAsync(1536 << 10, 64 << 10);
        }

        await AssertCleanAsync(path);
        var current = await QemuContentAsync(path);
        Assert.All(current.AsSpan(1000, 10000).ToArray(), b => Assert.Equal(0x71, b));
        Assert.All(current.AsSpan(512 << 10, 64 << 10).ToArray(), b => Assert.Equal(0, b));
        var saved = _dir.File("saved.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-l", "snapshot.name=before", "-O", "raw", path, saved);
        AssertSameBytes(snapshot, await File.ReadAllBytesAsync(saved), "the snapshot after writes to the active layer");
    }

    [SkippableFact]
    public async Task Persistent_bitmaps_are_counted_by_check_and_kept_byte_for_byte_by_a_read_only_open()
    {
        var path = _dir.File("bitmaps.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", path, "4M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", path);
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", path, "b0");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "-g", "128K", path, "b1");
        var hash = SHA256.HashData(await File.ReadAllBytesAsync(path));

        await using (var graph = new BlockGraph())
        {
            var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path), readOnly: true);
            var result = await Qcow2Check.CheckAsync(file, Qcow2RepairMode.None);
            Assert.Equal(0, result.Leaks);
            Assert.Equal(0, result.Corruptions);
        }

        Assert.Equal(1 << 20, (await OurContentAsync(path)).Count(b => b == 1));
        Assert.Equal(hash, SHA256.HashData(await File.ReadAllBytesAsync(path)));
        var info = await ExternalTool.RunCheckedAsync("qemu-img", "info", path);
        Assert.Contains("name: b1", info);
    }

    [SkippableFact]
    public async Task Extended_l2_images_read_the_same_and_refuse_writes()
    {
        ExternalTool.Require("qemu-io");
        var path = _dir.File("subclusters.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", path, "4M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x31 0 2k", "-c", "write -P 0x32 70k 4k", "-c", "write -z 200k 8k",
            "-c", "write -P 0x33 1M 128k", "-c", "write -z 1056k 2k", path);
        AssertSameBytes(await QemuContentAsync(path), await OurContentAsync(path), "extended L2");

        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path));
        var refused = await Assert.ThrowsAsync<BlockIOException>(() => node.WriteAsync(0, new byte[512]).AsTask());
        Assert.Equal(BlockErrno.ENOTSUP, refused.Errno);
        Assert.Contains("extended L2", refused.Message);
    }
}
