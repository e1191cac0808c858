using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// Block status of a huge, mostly unallocated qcow2 answers whole extents: the unallocated L1 entries between
/// two allocated clusters are one run, not one run per L2 span (512 MiB at 64 KiB clusters), so a mirror's
/// initial dirtying asks once per extent.
/// </summary>
public sealed class Qcow2SparseBlockStatusTests : IDisposable
{
    const int Cluster = 64 << 10;
    const long L2Span = (long)Cluster / 8 * Cluster;

    readonly TempDirectory _dir = new("blockmirror-qcow2-sparse-status-");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task The_unallocated_l1_entries_between_two_clusters_answer_as_one_run()
    {
        const long size = 1L << 40;
        var path = _dir.File("sparse.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = size, ClusterSize = Cluster });
        await using var graph = new BlockGraph();
        var image = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path));
        var data = Enumerable.Repeat((byte)0x3c, Cluster).ToArray();
        var far = (700L << 30) + (5 * Cluster);
        await image.WriteAsync(0, data);
        await image.WriteAsync(far, data);

        // From the cluster after the first: the rest of its L2 span, then every unallocated L1 entry up to the
        // span holding the second cluster: each step ends where allocation changes, not at a span boundary.
        var runs = new List<(long Offset, long Length, bool Allocated)>();
        for (long offset = 0; offset < size;)
        {
            var status = await image.GetBlockStatusAsync(offset, size - offset);
            runs.Add((offset, status.Length, status.IsData));
            offset += status.Length;
        }

        var farSpan = far / L2Span * L2Span;
        Assert.Equal(
        [
            (0, Cluster, true),
            (Cluster, L2Span - Cluster, false),
            (L2Span, farSpan - L2Span, false),
            (farSpan, far - farSpan, false),
            (far, Cluster, true),
            (far + Cluster, farSpan + L2Span - far - Cluster, false),
            (farSpan + L2Span, size - farSpan - L2Span, false),
        ], runs);
    }
}
