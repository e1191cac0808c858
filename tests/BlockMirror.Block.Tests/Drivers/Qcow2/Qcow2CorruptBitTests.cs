using System.Buffers.Binary;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// The corrupt bit: an image marked corrupt opens read-only, and opening it for writing is refused with
/// QEMU's message (qcow2_do_open); a repairing check (<c>-r all</c>) that leaves it consistent clears the bit.
/// </summary>
public sealed class Qcow2CorruptBitTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-qcow2-corrupt-");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task An_image_marked_corrupt_opens_read_only_and_is_refused_for_writing_until_a_repair_clears_the_mark()
    {
        var path = _dir.File("marked.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = 4096 });
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path));
            await node.WriteAsync(8192, Enumerable.Repeat((byte)0x5c, 4096).ToArray());
        }

        var bytes = await File.ReadAllBytesAsync(path);
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(72), Qcow2Header.IncompatibleCorrupt);
        await File.WriteAllBytesAsync(path, bytes);

        // QEMU's rule: read-only it opens (and reads); for writing it is refused until repaired.
        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, ReadOnly: true));
            var data = new byte[4096];
            await node.ReadAsync(8192, data);
            Assert.All(data, b => Assert.Equal(0x5c, b));
        }

        await using (var graph = new BlockGraph())
        {
            var error = await Assert.ThrowsAsync<BlockOpenException>(() => ImageFiles.OpenAsync(graph, new ImageOpenOptions(path)).AsTask());
            Assert.Equal($"Could not open '{path}': qcow2: Image is corrupt; cannot be opened read/write", error.Message);
            Assert.Equal(BlockErrno.EACCES, error.Errno);
            Assert.Empty(graph.Nodes);
        }

        Assert.Equal(bytes, await File.ReadAllBytesAsync(path));
        await using (var graph = new BlockGraph())
        {
            var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path));
            var result = await Qcow2Check.CheckAsync(file, Qcow2RepairMode.All);
            Assert.Equal(0, result.Corruptions);
        }

        await using (var graph = new BlockGraph())
        {
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path));
            Assert.Empty(Assert.IsType<Qcow2Driver>(node.Driver).Warnings);
            await node.WriteAsync(0, new byte[4096]);
        }
    }
}
