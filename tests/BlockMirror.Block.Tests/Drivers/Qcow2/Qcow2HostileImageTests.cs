using System.Security.Cryptography;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// Every image of <see cref="HostileImages"/> is opened read-only and read-write: refused where QEMU 7.2
/// refuses it, with QEMU's message after "Could not open 'FILE': ", opened where QEMU opens it; nothing
/// hangs, nothing crashes, and not one byte of the file changes.
/// </summary>
public sealed class Qcow2HostileImageTests : IDisposable
{
    static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    readonly TempDirectory _dir = new("blockmirror-hostile-");

    public void Dispose() => _dir.Dispose();

    public static TheoryData<string> Names => [.. HostileImages.All.Select(r => r.Name)];

    [Theory]
    [MemberData(nameof(Names))]
    public async Task A_hostile_image_gets_qemus_verdict_and_is_left_untouched(string name)
    {
        var recipe = HostileImages.All.Single(r => r.Name == name);
        var path = HostileImages.Write(_dir.Path, recipe);
        var before = SHA256.HashData(await File.ReadAllBytesAsync(path));
        foreach (var readOnly in new[] { true, false })
        {
            var refusal = recipe.Refusal ?? (readOnly ? null : recipe.WriteRefusal);
            await using var graph = new BlockGraph();
            var open = ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", ReadOnly: readOnly)).AsTask().WaitAsync(Patience);
            if (refusal is null)
            {
                await open;
                continue;
            }

            var error = await Assert.ThrowsAsync<BlockOpenException>(() => open);
            Assert.StartsWith($"Could not open '{path}': ", error.Message, StringComparison.Ordinal);
            Assert.Contains(refusal, error.Message, StringComparison.Ordinal);
            Assert.Empty(graph.Nodes);
        }

        if (recipe.Refusal is not null || recipe.WriteRefusal is not null)
        {
            Assert.Equal(before, SHA256.HashData(await File.ReadAllBytesAsync(path)));
        }
    }

    [Theory]
    [MemberData(nameof(Names))]
    public async Task Check_of_a_hostile_image_ends_cleanly_and_changes_nothing(string name)
    {
        var recipe = HostileImages.All.Single(r => r.Name == name);
        var path = HostileImages.Write(_dir.Path, recipe);
        var before = SHA256.HashData(await File.ReadAllBytesAsync(path));
        await using var graph = new BlockGraph();
        var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path), readOnly: true);
        try
        {
            // Either a report, or the header's fault; nothing else escapes, and nothing is written.
            await Qcow2Check.CheckAsync(file, Qcow2RepairMode.None).WaitAsync(Patience);
        }
        catch (Qcow2Exception e)
        {
            Assert.NotNull(recipe.Refusal);
            Assert.Equal(path, e.Image);
        }
        catch (Qcow2CheckFailedException e)
        {
            // qemu-img's check stops at a snapshot table it cannot read, with the same words.
            Assert.NotNull(recipe.Refusal);
            Assert.Contains(recipe.Refusal.ToLowerInvariant(), e.Message.ToLowerInvariant(), StringComparison.Ordinal);
        }

        Assert.Equal(before, SHA256.HashData(await File.ReadAllBytesAsync(path)));
    }

    [Fact]
    public async Task A_backing_file_loop_is_refused()
    {
        // a.qcow2 is backed by b.qcow2, which is backed by a.qcow2.
        var a = _dir.File("a.qcow2");
        var b = _dir.File("b.qcow2");
        await File.WriteAllBytesAsync(a, HostileImages.WithBacking(HostileImages.Valid(_dir.Path), "b.qcow2"));
        await File.WriteAllBytesAsync(b, HostileImages.WithBacking(HostileImages.Valid(_dir.Path), "a.qcow2"));
        await using var graph = new BlockGraph();
        var error = await Assert.ThrowsAsync<BlockOpenException>(() =>
            ImageFiles.OpenAsync(graph, new ImageOpenOptions(a, "qcow2", ReadOnly: true)).AsTask().WaitAsync(Patience));
        Assert.Contains("loop", error.Message, StringComparison.Ordinal);
        Assert.Equal(BlockErrno.ELOOP, error.Errno);
        Assert.Empty(graph.Nodes);
    }

    [Fact]
    public async Task An_image_that_backs_itself_is_refused()
    {
        var a = _dir.File("self.qcow2");
        await File.WriteAllBytesAsync(a, HostileImages.WithBacking(HostileImages.Valid(_dir.Path), "self.qcow2"));
        await using var graph = new BlockGraph();
        var error = await Assert.ThrowsAsync<BlockOpenException>(() =>
            ImageFiles.OpenAsync(graph, new ImageOpenOptions(a, "qcow2", ReadOnly: true)).AsTask().WaitAsync(Patience));
        Assert.Contains("loop", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_unaligned_data_cluster_fails_the_read_with_eio_and_a_read_only_image_stays_untouched()
    {
        // A valid image with 4 KiB clusters and one L2 table (cluster 4) whose first entry points 512 bytes
        // into cluster 5: aligned to the field's 512-byte unit, not to the cluster.
        const int Cluster = 4096;
        var path = _dir.File("unaligned-data.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = Cluster });
        var bytes = await File.ReadAllBytesAsync(path);
        Array.Resize(ref bytes, 6 * Cluster);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(3 * Cluster), (4 * Cluster) | (1UL << 63));
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(4 * Cluster), (5 * Cluster + 512) | (1UL << 63));
        await File.WriteAllBytesAsync(path, bytes);
        var before = SHA256.HashData(bytes);

        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", ReadOnly: true));
            var error = await Assert.ThrowsAsync<BlockIOException>(() => node.ReadAsync(0, new byte[512]).AsTask());
            Assert.Equal(BlockErrno.EIO, error.Errno);
            Assert.Contains("unaligned", error.Message, StringComparison.Ordinal);
        }

        Assert.Equal(before, SHA256.HashData(await File.ReadAllBytesAsync(path)));

        // Opened for writing, the same discovery marks the image corrupt, and writes are refused from then on.
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2"));
            await Assert.ThrowsAsync<BlockIOException>(() => node.ReadAsync(0, new byte[512]).AsTask());
            var refused = await Assert.ThrowsAsync<BlockIOException>(() => node.WriteAsync(512 << 10, new byte[512]).AsTask());
            Assert.Equal(BlockErrno.EACCES, refused.Errno);
        }

        var header = Qcow2Header.Parse(await File.ReadAllBytesAsync(path), path);
        Assert.NotEqual(0UL, header.IncompatibleFeatures & Qcow2Header.IncompatibleCorrupt);
    }
}
