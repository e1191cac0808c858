using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

// Preallocation of a new image (QEMU's preallocate_co, for blockdev-create's preallocation=metadata|falloc|full).
internal sealed partial class Qcow2Image
{
    /// <summary>
    /// Allocates a host cluster for every guest cluster and points the L2 entries at them (allocated, not zero:
    /// QEMU's preallocated entries), one L2 table's range at a time so that each table lies before its data, as
    /// in QEMU's layout. Nothing is written to the data clusters; the file grows over them and reads zeroes
    /// there. Returns the host ranges of the data, for falloc or full to allocate in the file.
    /// </summary>
    public async ValueTask<List<(long Offset, long Length)>> PreallocateMetadataAsync(CancellationToken cancellationToken)
    {
        var g = Geometry;
        var end = g.ClusterEnd(Header.Size);
        List<(long Offset, long Length)> data = [];
        for (var start = 0L; start < end;)
        {
            var pieceEnd = Math.Min(end, (g.L1Index(start) + 1) * g.L2Span);
            var clusters = (pieceEnd - start) >> g.ClusterBits;
            var (host, _) = await ReserveDataClustersAsync(start, clusters, cancellationToken).ConfigureAwait(false);
            await CommitDataClustersAsync(start, clusters, host, cancellationToken).ConfigureAwait(false);
            var length = clusters << g.ClusterBits;
            if (data.Count > 0 && data[^1].Offset + data[^1].Length == host)
            {
                data[^1] = (data[^1].Offset, data[^1].Length + length);
            }
            else
            {
                data.Add((host, length));
            }

            start = pieceEnd;
        }

        return data;
    }
}
