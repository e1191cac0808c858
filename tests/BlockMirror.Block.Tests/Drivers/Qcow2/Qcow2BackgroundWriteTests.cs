using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// A write flagged <see cref="RequestFlags.Background"/> (a mirror's copy while it yields to a guest) keeps the
/// flag on its data's writes to the file, whichever way qcow2 writes them, and never on the metadata's.
/// </summary>
public sealed class Qcow2BackgroundWriteTests : IDisposable
{
    const int Cluster = 64 * 1024;

    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task The_data_writes_keep_the_flag_and_the_metadata_writes_do_not()
    {
        var path = _dir.File("flags.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 16 * Cluster, ClusterSize = Cluster });
        await using var graph = new BlockGraph();
        var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path));
        var gateNode = await GateFilter.OpenAsync(graph, null, file, startOpen: true);
        var gate = (GateFilter)gateNode.Driver;
        var image = await Qcow2Driver.OpenAsync(graph, "img", gateNode);

        // A new cluster, whole: one data write, and the L2 table and refcounts written unflagged.
        var arrived = gate.Arrived;
        await image.WriteAsync(0, Pattern(1, Cluster), RequestFlags.Background);
        Assert.Equal(1, gate.BackgroundWrites);
        Assert.True(gate.Arrived - arrived > 1, "an allocation writes metadata too");

        // An overwrite of that cluster in place.
        await image.WriteAsync(512, Pattern(2, 4096), RequestFlags.Background);
        Assert.Equal(2, gate.BackgroundWrites);

        // Part of a new cluster: the data and the copied head and tail go out in one vectored write.
        await image.WriteAsync(3 * Cluster + 4096, Pattern(3, 4096), RequestFlags.Background);
        Assert.Equal(3, gate.BackgroundWrites);

        // Without the flag, nothing arrives flagged.
        await image.WriteAsync(5 * Cluster, Pattern(4, Cluster));
        Assert.Equal(3, gate.BackgroundWrites);

        var back = new byte[Cluster];
        await image.ReadAsync(0, back);
        var expected = Pattern(1, Cluster);
        Pattern(2, 4096).CopyTo(expected, 512);
        Assert.Equal(expected, back);
    }

    static byte[] Pattern(int seed, int length)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
