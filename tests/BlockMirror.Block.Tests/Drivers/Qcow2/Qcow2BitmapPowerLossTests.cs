using System.Text.Json;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Block.Tests.Drivers.PowerLoss;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// Persistent dirty bitmaps across a power loss. An incremental backup trusts a bitmap that is not marked in use
/// to name every part of the disk that changed since it was made: a change that reached the disk while the bitmap
/// on disk missed it is a backup that silently lacks data. So, whatever the disk's cache kept: a bitmap not in use
/// covers every chunk whose durable content differs from the content when the bitmap was made, a disabled one
/// still holds exactly its bits, and QEMU reads the same bitmaps with the same flags as this driver. The run
/// spans three opens of the image (each marks the bitmaps in use, each close stores them), a bitmap removed
/// while the image is open and a reopen read-only and back, and is cut anywhere, as in <see cref="Qcow2PowerLossTests"/>.
/// </summary>
public sealed class Qcow2BitmapPowerLossTests
{
    const int ClusterSize = 1024;
    const long Size = 384 << 10;
    const int Sessions = 3;
    const int StepsPerSession = 16;
    const int CutsPerRun = 8;

    // Tracking from the start, at twice the cluster size; removed in the second open; disabled, with one chunk set.
    const string Tracking = "tracking";
    const long TrackingGranularity = 2048;
    const string Removed = "removed";
    const long RemovedGranularity = 512;
    const string Frozen = "frozen";
    const long FrozenGranularity = 65536;
    const long FrozenChunk = 2 * FrozenGranularity;

    [SkippableFact]
    public async Task A_bitmap_not_in_use_after_a_power_loss_names_every_durable_change()
    {
        ExternalTool.Require("qemu-img");
        var consistentCuts = 0;
        await Seeds.RunAsync(Seeds.Range(12), async seed =>
        {
            using var dir = TempDirectory.InMemory("blockmirror-bitmap-power-loss-");
            var random = new Random(seed);
            var path = dir.File("image.qcow2");
            Qcow2Create.Create(path, new Qcow2CreateOptions { Size = Size, ClusterSize = ClusterSize });

            // The bitmaps are made and stored before the journal starts: the disk then reads as zeroes.
            await using (var graph = new BlockGraph())
            {
                var (_, bitmaps) = await OpenAsync(graph, path);
                bitmaps.AddPersistentBitmap(Tracking, TrackingGranularity, disabled: false);
                bitmaps.AddPersistentBitmap(Removed, RemovedGranularity, disabled: false);
                bitmaps.AddPersistentBitmap(Frozen, FrozenGranularity, disabled: true).SetDirty(FrozenChunk, 1);
            }

            var initial = await File.ReadAllBytesAsync(path);
            var journal = new PowerLossJournal();
            var guest = new PowerLossGuest(new byte[Size], ClusterSize);
            for (var session = 0; session < Sessions; session++)
            {
                await using var graph = new BlockGraph();
                var (disk, bitmaps) = await OpenAsync(graph, path, journal);
                for (var step = 0; step < StepsPerSession; step++)
                {
                    if (session == 1 && step == StepsPerSession / 2)
                    {
                        // Removed from the image at once, while the others stay in use.
                        Assert.True(await bitmaps.RemovePersistentBitmapAsync(Removed));
                    }

                    if (session == 2 && step == StepsPerSession / 2)
                    {
                        // Reopened read-only (the bitmaps are stored, no longer in use) and read-write again (in use
                        // again before the next write), as libvirt does around a snapshot.
                        var image = disk.Node;
                        await graph.DetachRootAsync(disk);
                        await graph.ReopenAsync(image, readOnly: true);
                        await graph.ReopenAsync(image, readOnly: false);
                        disk = graph.AttachRoot(image, new RootParent("guest"), "guest", BlockPermissions.ConsistentRead | BlockPermissions.Write);
                    }

                    await guest.RunStepAsync(disk, journal, random);
                }
            }

            var entries = journal.Snapshot();
            var crashed = dir.File("crashed.qcow2");
            var raw = dir.File("crashed.raw");
            for (var i = 0; i < CutsPerRun; i++)
            {
                var cut = PowerLossCuts.Pick(entries, i, random);
                await File.WriteAllBytesAsync(crashed, PowerLossImage.Build(initial, entries, cut, random));
                var where = $"seed {seed}, power lost after journal entry {cut} of {entries.Count}";
                var trusted = await CheckBitmapsAsync(crashed, raw, where);
                if (i == 0)
                {
                    // Nothing lost: the last close stored the bitmap.
                    Assert.True(trusted, $"{where}: the '{Tracking}' bitmap is not usable after a clean close");
                }

                if (trusted)
                {
                    Interlocked.Increment(ref consistentCuts);
                }

                // Opened for writing by us (a crashed image is repaired), written and closed: the bitmaps still hold.
                await using (var graph = new BlockGraph())
                {
                    var (disk, _) = await OpenAsync(graph, crashed);
                    var more = new byte[512];
                    random.NextBytes(more);
                    await disk.WriteAsync(random.Next((int)(Size / 512)) * 512L, more);
                }

                Assert.Equal(trusted, await CheckBitmapsAsync(crashed, raw, $"{where}, then opened and written by us"));
            }
        });

        // The cut at the end alone gives one trusted bitmap per seed; the random cuts must reach some too.
        Assert.True(consistentCuts > 12, $"only {consistentCuts} cuts left a bitmap that is not in use");
    }

    static async Task<(NodeEdge Disk, IPersistentBitmaps Bitmaps)> OpenAsync(BlockGraph graph, string path, PowerLossJournal? journal = null)
    {
        var file = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path, Discard: FileDiscardMode.Unmap));
        var below = journal is null ? file : await PowerLossRecorder.OpenAsync(graph, file, journal);
        var image = await Qcow2Driver.OpenAsync(graph, "image", below);
        var disk = graph.AttachRoot(image, new RootParent("guest"), "guest", BlockPermissions.ConsistentRead | BlockPermissions.Write);
        return (disk, (IPersistentBitmaps)image.Driver);
    }

    /// <summary>
    /// Checks the image and its bitmaps after a power loss; returns whether the tracking bitmap is usable (not in
    /// use), having checked that it then covers every chunk that reads other than zero.
    /// </summary>
    static async Task<bool> CheckBitmapsAsync(string path, string raw, string where)
    {
        await Qcow2PowerLossTests.CheckAsync(path, where);
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw);
        var content = await File.ReadAllBytesAsync(raw);
        var qemu = await QemuBitmapsAsync(path);

        await using var graph = new BlockGraph();
        var file = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path), readOnly: true);
        var image = await Qcow2Driver.OpenAsync(graph, "image", file, readOnly: true);
        var bitmaps = (IPersistentBitmaps)image.Driver;
        var ours = bitmaps.StoredBitmaps.Select(b => $"{b.Name} {b.Granularity}{(b.InUse ? " in-use" : "")}{(b.Auto ? " auto" : "")}").ToList();
        Assert.True(qemu.SequenceEqual(ours), $"{where}: qemu-img info lists [{string.Join(", ", qemu)}], this driver [{string.Join(", ", ours)}]");

        foreach (var name in new[] { Tracking, Removed })
        {
            if (bitmaps.FindPersistentBitmap(name) is { } bitmap)
            {
                for (var offset = 0L; offset < Size; offset += bitmap.Granularity)
                {
                    var chunk = content.AsSpan((int)offset, (int)Math.Min(bitmap.Granularity, Size - offset));
                    Assert.False(chunk.ContainsAnyExcept((byte)0) && !bitmap.IsDirty(offset),
                        $"{where}: bytes {offset}..{offset + chunk.Length} changed on the disk, but bitmap '{name}', not in use, says they did not");
                }
            }
        }

        if (bitmaps.FindPersistentBitmap(Frozen) is { } frozen)
        {
            Assert.Equal([FrozenChunk], frozen.EnumerateDirtyAreas().Select(a => a.Offset));
            Assert.Equal(FrozenGranularity, frozen.EnumerateDirtyAreas().Single().Length);
        }

        return bitmaps.FindPersistentBitmap(Tracking) is not null;
    }

    /// <summary>The bitmaps qemu-img info lists, each as "name granularity [in-use] [auto]".</summary>
    static async Task<List<string>> QemuBitmapsAsync(string path)
    {
        var json = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", path);
        using var document = JsonDocument.Parse(json);
        var result = new List<string>();
        if (document.RootElement.GetProperty("format-specific").GetProperty("data").TryGetProperty("bitmaps", out var list))
        {
            foreach (var b in list.EnumerateArray())
            {
                var flags = b.GetProperty("flags").EnumerateArray().Select(f => f.GetString()).ToHashSet();
                result.Add($"{b.GetProperty("name").GetString()} {b.GetProperty("granularity").GetInt64()}{(flags.Contains("in-use") ? " in-use" : "")}{(flags.Contains("auto") ? " auto" : "")}");
            }
        }

        return result;
    }
}
