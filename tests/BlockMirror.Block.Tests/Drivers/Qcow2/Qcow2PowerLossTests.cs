using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Block.Tests.Drivers.PowerLoss;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// The qcow2 driver's promise across a power loss, as QEMU's: whatever the disk's cache kept of the unflushed
/// writes, <c>qemu-img check</c> finds no corruption (leaked clusters are allowed), and every guest write that
/// completed before a completed guest flush reads back. A journal below the driver records every file change
/// and flush; each run is cut at random moments (half of them just before a flush completes) and the file a disk
/// could hold then (<see cref="PowerLossImage"/>: flushed changes kept, the others kept, dropped or torn at random)
/// is checked, then opened by this driver (which repairs a dirty image), written once more and checked again.
/// </summary>
public sealed class Qcow2PowerLossTests
{
    /// <summary>One kind of image.</summary>
    public sealed record Shape(string Name, int ClusterSize, long Size, int Version = 3, int RefcountBits = 16, bool Lazy = false,
        bool Backing = false, bool PassDiscard = false, bool Snapshot = false, long GrowTo = 0, int Steps = 50);

    static readonly Shape[] AllShapes =
    [
        // 512-byte clusters: L2 tables, refcount blocks and a larger refcount table are allocated within a run.
        new("512 B clusters", 512, 256 << 10),
        new("4 KiB clusters", 4096, 1 << 20),
        new("compat 0.10, 1 KiB clusters", 1024, 512 << 10, Version: 2),
        new("4-bit refcounts, 512 B clusters", 512, 192 << 10, RefcountBits: 4),
        // Freed clusters punched out of the file (discard=unmap): the release order matters most.
        new("discard passed down, 512 B clusters", 512, 256 << 10, PassDiscard: true),
        // Partial writes copy the rest of the cluster up from the backing file.
        new("over a backing file, 1 KiB clusters", 1024, 384 << 10, Backing: true),
        // Every cluster and table shared with an internal snapshot: a write copies the cluster, and the L2 table
        // too, and drops the old ones' refcounts; the snapshot must read as it was whatever reached the disk.
        new("over an internal snapshot, 512 B clusters", 512, 256 << 10, Snapshot: true, PassDiscard: true),
        // Lazy refcounts: refcounts are not flushed ahead of the tables that rely on them; the dirty bit and the
        // repair at the next open stand in. A new table is still flushed before anything points at it.
        new("lazy refcounts, 512 B clusters", 512, 256 << 10, Lazy: true),
        // Grown half way (between requests, as block_resize drains): the L1 table moves to three new clusters and
        // the header switches to it; the guest keeps writing below the old end. Either size may survive.
        new("grown to a larger L1 table, 512 B clusters", 512, 256 << 10, GrowTo: 6 << 20),
    ];

    public static TheoryData<string> Shapes => [.. AllShapes.Select(s => s.Name)];

    const int CutsPerRun = 8;

    [SkippableTheory]
    [MemberData(nameof(Shapes))]
    public async Task A_power_loss_at_any_moment_leaves_a_consistent_image_with_every_flushed_write(string shapeName)
    {
        ExternalTool.Require("qemu-img");
        var shape = AllShapes.Single(s => s.Name == shapeName);
        await Seeds.RunAsync(Seeds.Range(12), async seed =>
        {
            using var dir = TempDirectory.InMemory("blockmirror-qcow2-power-loss-");
            var random = new Random(seed);
            var path = dir.File("image.qcow2");
            // What the guest reads before the run: the backing file's data, or the data the snapshot keeps.
            var backing = new byte[shape.Size];
            string? backingPath = null;
            if (shape.Backing || shape.Snapshot)
            {
                random.NextBytes(backing);
            }

            if (shape.Backing)
            {
                backingPath = dir.File("backing.raw");
                await File.WriteAllBytesAsync(backingPath, backing);
            }

            Qcow2Create.Create(path, new Qcow2CreateOptions
            {
                Size = shape.Size,
                ClusterSize = shape.ClusterSize,
                Version = shape.Version,
                RefcountBits = shape.RefcountBits,
                LazyRefcounts = shape.Lazy,
                BackingFile = backingPath,
                BackingFormat = backingPath is null ? null : "raw",
            });
            if (shape.Snapshot)
            {
                await using (var graph = new BlockGraph())
                {
                    var file = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path));
                    var image = await Qcow2Driver.OpenAsync(graph, "image", file);
                    await image.WriteAsync(0, backing);
                }

                await ExternalTool.RunCheckedAsync("qemu-img", "snapshot", "-c", "before", path);
            }

            var initial = await File.ReadAllBytesAsync(path);
            var journal = new PowerLossJournal();
            var guest = new PowerLossGuest(backing, shape.ClusterSize);
            int growStart = 0, growEnd = 0;
            var options = new Qcow2Options { Discard = shape.PassDiscard ? FileDiscardMode.Unmap : FileDiscardMode.Ignore };

            await using (var graph = new BlockGraph())
            {
                var file = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path, Discard: FileDiscardMode.Unmap));
                var recorder = await PowerLossRecorder.OpenAsync(graph, file, journal);
                var image = await Qcow2Driver.OpenAsync(graph, "image", recorder, options);
                var disk = graph.AttachRoot(image, new RootParent("guest"), "guest", BlockPermissions.ConsistentRead | BlockPermissions.Write | BlockPermissions.Resize);
                for (var step = 0; step < shape.Steps; step++)
                {
                    if (shape.GrowTo > 0 && step == shape.Steps / 2)
                    {
                        growStart = journal.Count;
                        await disk.TruncateAsync(shape.GrowTo);
                        growEnd = journal.Count;
                    }

                    await guest.RunStepAsync(disk, journal, random);
                }
            }

            // The close (caches written back, a final flush) is in the journal too: a cut may fall inside it.
            var entries = journal.Snapshot();
            var crashed = dir.File("crashed.qcow2");
            var raw = dir.File("crashed.raw");
            for (var i = 0; i < CutsPerRun; i++)
            {
                // A grow's few entries get two cuts of their own.
                var cut = PowerLossCuts.Pick(entries, i, random, (growStart, growEnd));
                await File.WriteAllBytesAsync(crashed, PowerLossImage.Build(initial, entries, cut, random));
                var where = $"power lost after journal entry {cut} of {entries.Count}";
                if (!shape.Lazy)
                {
                    // A lazy image is left dirty with refcounts that may be behind: only a repair makes it whole.
                    await CheckAsync(crashed, where);
                }

                // Opened again by us (a dirty image is repaired first) and written once more, it stays consistent.
                var (expected, known) = guest.DurableAt(entries, cut);
                var after = Math.Min(shape.Size - 512, random.Next((int)shape.Size) / 512 * 512);
                var more = new byte[512];
                random.NextBytes(more);
                await using (var graph = new BlockGraph())
                {
                    var file = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(crashed));
                    var image = await Qcow2Driver.OpenAsync(graph, "image", file, options);
                    var disk = graph.AttachRoot(image, new RootParent("guest"), "guest", BlockPermissions.ConsistentRead | BlockPermissions.Write);
                    await disk.WriteAsync(after, more);
                    await disk.FlushAsync();
                }

                more.CopyTo(expected.AsSpan((int)after));
                known.AsSpan((int)after, more.Length).Fill(true);
                await CheckAsync(crashed, $"{where}, then opened and written by us");

                await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", crashed, raw);
                var content = await File.ReadAllBytesAsync(raw);
                Assert.True(content.Length == shape.Size || content.Length == shape.GrowTo, $"{where}: the image is {content.Length} bytes long");
                // Past the old end (a grow that survived) the disk reads as zeroes.
                Assert.False(content.AsSpan((int)shape.Size).ContainsAnyExcept((byte)0), $"{where}: the grown part does not read as zeroes");
                for (var b = 0; b < shape.Size; b++)
                {
                    if (known[b] && content[b] != expected[b])
                    {
                        Assert.Fail($"{where}: guest byte {b} reads 0x{content[b]:x2}, but a write made durable (flushed or FUA) made it 0x{expected[b]:x2} ({guest.Describe(b)})");
                    }
                }

                if (shape.Snapshot)
                {
                    await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-l", "snapshot.name=before", "-f", "qcow2", "-O", "raw", crashed, raw);
                    Assert.True((await File.ReadAllBytesAsync(raw)).AsSpan().SequenceEqual(backing), $"{where}: the internal snapshot no longer reads as it was made");
                }
            }
        });
    }

    /// <summary>No corruption: a clean image, or one with leaked clusters only (exit status 3).</summary>
    internal static async Task CheckAsync(string path, string where)
    {
        var check = await ExternalTool.RunAsync("qemu-img", ["check", "-f", "qcow2", path]);
        Assert.True(check.ExitCode is 0 or 3, $"{where}: qemu-img check exited {check.ExitCode}:\n{check.StandardOutput}{check.StandardError}");
    }
}
