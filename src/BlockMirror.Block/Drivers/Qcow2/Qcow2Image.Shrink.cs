using System.Buffers.Binary;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

// Making the virtual size smaller, as QEMU 7.2's qcow2_co_truncate does when the new size is below the old.
internal sealed partial class Qcow2Image
{
    /// <summary>
    /// Shrinks the virtual size to <paramref name="size"/> (a multiple of 512, below the current size). In QEMU's
    /// steps and order: the whole clusters past the new end are released and left unallocated, their host
    /// clusters punched out of the file whatever <c>discard</c> says (QCOW2_DISCARD_ALWAYS); the L1 entries past
    /// the new end are cleared on disk and their L2 tables freed (the L1 table keeps its size, as QEMU's does);
    /// refcount blocks that now count nothing are dropped; the file is cut after the last cluster in use; and
    /// only then does the header take the new size. The cluster the new end falls in keeps its data, as in QEMU.
    /// Internal snapshots keep their own tables and the clusters they reference.
    /// </summary>
    public async ValueTask ShrinkAsync(long size, CancellationToken cancellationToken)
    {
        var g = Geometry;
        await BeforeMetadataWriteAsync(cancellationToken).ConfigureAwait(false);
        var end = g.ClusterEnd(Header.Size);
        for (var start = g.ClusterEnd(size); start < end;)
        {
            var pieceEnd = Math.Min(end, (g.L1Index(start) + 1) * g.L2Span);
            await UpdateClustersAsync(start, (pieceEnd - start) >> g.ClusterBits, ClusterUpdate.Crop, hasBacking: false, cancellationToken).ConfigureAwait(false);
            start = pieceEnd;
        }

        await ShrinkL1TableAsync(Header.L1EntriesFor(size), cancellationToken).ConfigureAwait(false);
        await ShrinkRefcountTableAsync(cancellationToken).ConfigureAwait(false);
        await CutFileTailAsync(cancellationToken).ConfigureAwait(false);

        Header.Size = size;
        BinaryPrimitives.WriteUInt64BigEndian(_headerBlock.AsSpan(24), (ulong)size);
        await WriteHeaderAsync(24, 32, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// QEMU's qcow2_shrink_l1_table: the entries from <paramref name="entries"/> on are zeroed on disk and flushed
    /// before the L2 tables they pointed at are freed, so no entry on disk ever points at a freed cluster.
    /// </summary>
    async ValueTask ShrinkL1TableAsync(long entries, CancellationToken cancellationToken)
    {
        if (entries >= _l1.Length)
        {
            return;
        }

        var g = Geometry;
        // Every L2 table past the new end was emptied above: nothing cached for it may be written later.
        await WriteBackL2Async(cancellationToken).ConfigureAwait(false);
        List<long> tables = [];
        for (var i = entries; i < _l1.Length; i++)
        {
            if (L2TableOffset(i) is var offset and not 0)
            {
                tables.Add(offset);
            }

            _l1[i] = 0;
        }

        _file.DebugEvent(BlkdebugEvent.L1ShrinkWriteTable);
        var from = entries * 8 / Math.Max(_fileAlignment, 8) * Math.Max(_fileAlignment, 8);
        var bytes = new byte[(g.ClustersFor((long)_l1.Length * 8) << g.ClusterBits) - from];
        for (var i = from / 8; i < _l1.Length; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan((int)(i * 8 - from)), _l1[i]);
        }

        await _file.WriteAsync(Header.L1TableOffset + from, bytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);

        _file.DebugEvent(BlkdebugEvent.L1ShrinkFreeL2Clusters);
        foreach (var offset in tables)
        {
            _l2Offsets.Remove(offset);
            _l2Cache.Forget(offset);
        }

        await ReleaseUnlinkedAsync([.. tables.Select(t => t >> g.ClusterBits)], punch: true, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// QEMU's qcow2_shrink_reftable: a refcount block that counts no cluster but (perhaps) itself is taken out of
    /// the refcount table on disk, then its own cluster is released.
    /// </summary>
    async ValueTask ShrinkRefcountTableAsync(CancellationToken cancellationToken)
    {
        var g = Geometry;
        List<long> unused = [];
        for (var i = 0L; i < _reftable.Length; i++)
        {
            if (RefblockOffset(i) is var offset and not 0 && await CountsNothingAsync(i, offset, cancellationToken).ConfigureAwait(false))
            {
                unused.Add(i);
            }
        }

        if (unused.Count == 0)
        {
            return;
        }

        // The refcounts the blocks that stay hold reach the disk first; the table then drops the empty ones.
        await WriteBackAsync(cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
        var table = (ulong[])_reftable.Clone();
        foreach (var i in unused)
        {
            table[i] = 0;
        }

        var bytes = new byte[g.ClustersFor((long)table.Length * 8) << g.ClusterBits];
        for (var i = 0; i < table.Length; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), table[i]);
        }

        await _file.WriteAsync(Header.RefcountTableOffset, bytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);

        foreach (var i in unused)
        {
            var offset = RefblockOffset(i);
            var cluster = offset >> g.ClusterBits;
            _refblockCache.Forget(offset);
            _refblockOffsets.Remove(offset);
            _reftable[i] = 0;
            // A block that counted itself took its own count with it; one counted by another block is released there.
            if (cluster >> g.RefblockBits != i)
            {
                await UpdateRefcountAsync(cluster, -1, cancellationToken).ConfigureAwait(false);
            }
            else if (cluster < _freeClusterHint)
            {
                _freeClusterHint = cluster;
            }

            await _file.DiscardAsync(offset, g.ClusterSize, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Whether refcount block <paramref name="index"/> (at <paramref name="offset"/>) holds no count but perhaps its own.</summary>
    async ValueTask<bool> CountsNothingAsync(long index, long offset, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var block = await _refblockCache.GetAsync(offset, load: true, cancellationToken).ConfigureAwait(false);
        var own = (offset >> g.ClusterBits) >> g.RefblockBits == index ? (offset >> g.ClusterBits) & (g.RefblockEntries - 1) : -1;
        for (var e = 0L; e < g.RefblockEntries; e++)
        {
            if (e != own && ReadRefcount(block.Span, e, g.RefcountOrder) != 0)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// Cuts the file after the last cluster with a reference (QEMU's qcow2_get_last_cluster and the truncate
    /// after it); the refcounts are written first, so the file never ends before a cluster the disk says is used.
    /// As in QEMU, a file that cannot be cut is left as it is.
    /// </summary>
    async ValueTask CutFileTailAsync(CancellationToken cancellationToken)
    {
        var g = Geometry;
        await WriteBackAsync(cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
        var length = _file.Node.Length;
        var last = g.ClustersFor(length) - 1;
        while (last >= 0 && await GetRefcountAsync(last, cancellationToken).ConfigureAwait(false) == 0)
        {
            last--;
        }

        if (last < 0)
        {
            throw new Qcow2Corruption("There are no references in the refcount table.");
        }

        var newLength = (last + 1) << g.ClusterBits;
        if (newLength >= length)
        {
            return;
        }

        try
        {
            await _file.TruncateAsync(newLength, cancellationToken).ConfigureAwait(false);
            // Clusters past the new end read as zeroes again when the file grows back over them.
            _untouchedFrom = Math.Min(_untouchedFrom, last + 1);
        }
        catch (BlockIOException)
        {
            // QEMU only warns ("Failed to truncate the tail of the image"): the image is whole either way.
        }
    }
}
