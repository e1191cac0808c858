using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

// The order in which cached metadata reaches the file.
//
//   allocation:  refcount +1 ──(write, flush)──▶ L2 entry / L1 entry / header pointer
//   release:     L2 entry cleared ──(write, flush)──▶ refcount −1
//
// _l2NeedsRefcountsFirst records an increment not yet durable; a table that may point at the new cluster
// waits for it. _refcountsNeedL2Durable records a decrement whose unlinking write is not yet flushed; the
// refcount block waits for it. With lazy refcounts these two flushes are skipped and the dirty bit stands in
// for them (the repair at the next open recounts). A new table is still flushed before anything points at it
// (GetL2ForWriteAsync, the new refcount blocks): a pointer to a table that never reached the disk is beyond
// any repair.
internal sealed partial class Qcow2Image
{
    public ValueTask LoadAsync(Qcow2TableCache cache, Qcow2Table table, CancellationToken cancellationToken) =>
        ReadClampedAsync(table.Offset, table.Memory, cancellationToken);

    public async ValueTask StoreAsync(Qcow2TableCache cache, IReadOnlyList<Qcow2Table> tables, CancellationToken cancellationToken)
    {
        if (tables.Count == 0)
        {
            return;
        }

        await BeforeMetadataWriteAsync(cancellationToken).ConfigureAwait(false);
        if (ReferenceEquals(cache, _l2Cache))
        {
            await MakeRefcountsDurableAsync(cancellationToken).ConfigureAwait(false);
        }
        else if (_refcountsNeedL2Durable)
        {
            if (!Lazy)
            {
                await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
            }

            _refcountsNeedL2Durable = false;
        }

        foreach (var table in tables)
        {
            await EnsureFileLengthAsync(table.Offset + Geometry.ClusterSize, cancellationToken).ConfigureAwait(false);
            // QEMU's cache write-back announces each table it writes.
            _file.DebugEvent(ReferenceEquals(cache, _l2Cache) ? BlkdebugEvent.L2Update : BlkdebugEvent.RefblockUpdatePart);
            await _file.WriteAsync(table.Offset, table.Memory, RequestFlags.None, cancellationToken).ConfigureAwait(false);
            table.Dirty = false;
        }
    }

    /// <summary>Writes (and flushes) the refcount increments that a pointer about to be written relies on.</summary>
    async ValueTask MakeRefcountsDurableAsync(CancellationToken cancellationToken)
    {
        if (!_l2NeedsRefcountsFirst)
        {
            return;
        }

        await StoreAsync(_refblockCache, _refblockCache.DirtyTables(), cancellationToken).ConfigureAwait(false);
        if (!Lazy)
        {
            await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
        }

        _l2NeedsRefcountsFirst = false;
    }

    async ValueTask WriteBackL2Async(CancellationToken cancellationToken) =>
        await StoreAsync(_l2Cache, _l2Cache.DirtyTables(), cancellationToken).ConfigureAwait(false);

    /// <summary>Writes every cached change to the file, in order (the caller flushes the file afterwards).</summary>
    public async ValueTask WriteBackAsync(CancellationToken cancellationToken)
    {
        await WriteBackL2Async(cancellationToken).ConfigureAwait(false);
        await StoreAsync(_refblockCache, _refblockCache.DirtyTables(), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>With lazy refcounts, marks the image dirty (on disk, flushed) before its first metadata write.</summary>
    async ValueTask BeforeMetadataWriteAsync(CancellationToken cancellationToken)
    {
        if (Lazy && !_markedDirty)
        {
            _markedDirty = true;
            await SetIncompatibleFeaturesAsync(Header.IncompatibleFeatures | Qcow2Header.IncompatibleDirty, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>A clean close: everything cached is written and flushed, and a lazy image is marked clean.</summary>
    public async ValueTask CloseAsync(CancellationToken cancellationToken)
    {
        if (!Writable || Corrupt)
        {
            return;
        }

        await WriteBackAsync(cancellationToken).ConfigureAwait(false);

        // The file grew ahead of the allocations in steps; what lies past the last cluster ever used was never
        // written and nothing points there.
        var usedEnd = _untouchedFrom << Geometry.ClusterBits;
        if (_grewFile && _file.Node.Length > usedEnd && usedEnd % _fileAlignment == 0)
        {
            await _file.TruncateAsync(usedEnd, cancellationToken).ConfigureAwait(false);
        }

        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
        if (_markedDirty)
        {
            await SetIncompatibleFeaturesAsync(Header.IncompatibleFeatures & ~Qcow2Header.IncompatibleDirty, cancellationToken).ConfigureAwait(false);
            _markedDirty = false;
        }
    }

    /// <summary>
    /// Grows the virtual size; a larger L1 table, when needed, is written and flushed at a new place before
    /// the header points at it. Shrinking is <see cref="ShrinkAsync"/>.
    /// </summary>
    public async ValueTask GrowAsync(long size, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var entries = Header.L1EntriesFor(size);
        if (entries > Qcow2Header.MaxL1TableBytes / 8)
        {
            throw BlockIOException.Create(BlockErrno.EFBIG, Name, BlockOperation.Truncate, 0, size,
                $"a virtual size of {size} bytes needs an L1 table larger than {Qcow2Header.MaxL1TableBytes >> 20} MiB");
        }

        await BeforeMetadataWriteAsync(cancellationToken).ConfigureAwait(false);
        var header = System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian;
        if (entries > _l1.Length)
        {
            var clusters = g.ClustersFor(entries * 8);
            var (first, _) = await AllocateClustersAsync(clusters, cancellationToken).ConfigureAwait(false);
            var table = new ulong[entries];
            _l1.CopyTo(table, 0);
            var bytes = new byte[clusters << g.ClusterBits];
            for (var i = 0; i < table.Length; i++)
            {
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), table[i]);
            }

            var offset = first << g.ClusterBits;
            await MakeRefcountsDurableAsync(cancellationToken).ConfigureAwait(false);
            await _file.WriteAsync(offset, bytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
            await _file.FlushAsync(cancellationToken).ConfigureAwait(false);

            var oldOffset = Header.L1TableOffset;
            var oldClusters = g.ClustersFor((long)_l1.Length * 8);
            Header.Size = size;
            Header.L1Size = (int)entries;
            Header.L1TableOffset = offset;
            header(_headerBlock.AsSpan(24), (ulong)size);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(_headerBlock.AsSpan(36), (uint)entries);
            header(_headerBlock.AsSpan(40), (ulong)offset);
            await WriteHeaderAsync(24, 48, cancellationToken).ConfigureAwait(false);
            await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
            _l1 = table;
            if (oldClusters > 0 && oldOffset != 0)
            {
                List<long> old = [];
                for (var c = oldOffset >> g.ClusterBits; c < (oldOffset >> g.ClusterBits) + oldClusters; c++)
                {
                    old.Add(c);
                }

                await ReleaseUnlinkedAsync(old, punch: false, cancellationToken).ConfigureAwait(false);
            }

            return;
        }

        Header.Size = size;
        header(_headerBlock.AsSpan(24), (ulong)size);
        await WriteHeaderAsync(24, 32, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
    }
}
