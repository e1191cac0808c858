using System.Runtime.CompilerServices;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

// Guest-to-host mapping: L1 and L2 lookups, and the changes allocating writes, write-zeroes and discard make.
internal sealed partial class Qcow2Image
{
    /// <summary>How a run of guest clusters changes in <see cref="UpdateClustersAsync"/>.</summary>
    public enum ClusterUpdate
    {
        /// <summary>Read as zeroes; a cluster this image owns keeps its host cluster (preallocated zeroes).</summary>
        ZeroKeepingHost,

        /// <summary>Read as zeroes; host clusters are freed.</summary>
        ZeroUnmapping,

        /// <summary>Release the clusters (QEMU's non-full discard: on version 3 they still read as zeroes).</summary>
        Discard,

        /// <summary>Release the clusters and leave them unallocated, reading from the backing file again (a full discard).</summary>
        Unallocate,

        /// <summary>
        /// As <see cref="Unallocate"/>, and the freed host clusters are punched out of the file whatever
        /// <c>discard</c> says (QEMU's QCOW2_DISCARD_ALWAYS): the clusters a shrink cuts off.
        /// </summary>
        Crop,
    }

    /// <summary>
    /// How the guest bytes from <paramref name="offset"/> map, for at most <paramref name="length"/> bytes and
    /// never past the end of the L2 table that maps <paramref name="offset"/>.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<Qcow2Mapping> GetMappingAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var l1Index = g.L1Index(offset);
        var l2Offset = L2TableOffset(l1Index);
        if (l2Offset == 0)
        {
            // The run goes on over the L1 entries after it that are unallocated too: the L1 table is in memory,
            // so a sparse image answers one call per extent, not one per L2 span (512 MiB at 64 KiB clusters).
            var end = offset + length;
            var next = l1Index + 1;
            while (next < _l1.Length && next * g.L2Span < end && Qcow2Entries.HostOffset(_l1[next]) == 0)
            {
                next++;
            }

            return new Qcow2Mapping(Qcow2ClusterKind.Unallocated, Math.Min(end, next * g.L2Span) - offset, -1, false, 0);
        }

        length = Math.Min(length, (l1Index + 1) * g.L2Span - offset);

        // blkdebug's l2_load comes with every lookup of an L2 table, cached or not, as in QEMU.
        _file.DebugEvent(BlkdebugEvent.L2Load);
        var table = await _l2Cache.GetAsync(l2Offset, load: true, cancellationToken).ConfigureAwait(false);
        var unit = g.SubclusterSize;
        var perCluster = 1 << (g.ClusterBits - g.SubclusterBits);
        var index = g.L2Index(offset);
        var sub = (int)((offset & g.ClusterMask) >> g.SubclusterBits);
        var first = Describe(table, index, sub);
        var within = offset & (unit - 1);
        if (first.Kind == Qcow2ClusterKind.Compressed)
        {
            // A compressed cluster is one unit, whatever the subcluster size.
            return new Qcow2Mapping(first.Kind, Math.Min(length, g.ClusterSize - (offset & g.ClusterMask)), -1, false, first.Entry);
        }

        long run = unit - within;
        var expectedHost = first.Host >= 0 ? first.Host + unit : -1;
        while (run < length)
        {
            if (++sub == perCluster)
            {
                sub = 0;
                if (++index == g.L2Entries)
                {
                    break;
                }
            }

            var next = Describe(table, index, sub);
            if (next.Kind != first.Kind || next.Copied != first.Copied || (next.Host >= 0) != (expectedHost >= 0) ||
                (expectedHost >= 0 && next.Host != expectedHost))
            {
                break;
            }

            run += unit;
            if (expectedHost >= 0)
            {
                expectedHost += unit;
            }
        }

        return new Qcow2Mapping(first.Kind, Math.Min(run, length), first.Host >= 0 ? first.Host + within : -1, first.Copied, first.Entry);
    }

    /// <summary>What one subcluster (or cluster, without extended L2 entries) of an L2 table is.</summary>
    (Qcow2ClusterKind Kind, long Host, bool Copied, ulong Entry) Describe(Qcow2Table table, int index, int sub)
    {
        var g = Geometry;
        if (!g.ExtendedL2)
        {
            var entry = table.ReadUInt64(index);
            if ((entry & Qcow2Entries.Compressed) != 0)
            {
                return (Qcow2ClusterKind.Compressed, -1, false, entry);
            }

            var host = Qcow2Entries.HostOffset(entry);
            var copied = (entry & Qcow2Entries.Copied) != 0;
            if ((entry & Qcow2Entries.Zero) != 0)
            {
                return (Qcow2ClusterKind.Zero, host != 0 ? host : -1, copied, entry);
            }

            if (host == 0)
            {
                return (Qcow2ClusterKind.Unallocated, -1, false, entry);
            }

            if ((host & g.ClusterMask) != 0)
            {
                throw new Qcow2Corruption($"Cluster allocation offset 0x{host:x} unaligned (L2 offset: 0x{table.Offset:x}, L2 index: 0x{index:x})");
            }

            return (Qcow2ClusterKind.Normal, host, copied, entry);
        }

        var standard = table.ReadUInt64(index * 2);
        var bitmap = table.ReadUInt64(index * 2 + 1);
        if ((standard & Qcow2Entries.Compressed) != 0)
        {
            return (Qcow2ClusterKind.Compressed, -1, false, standard);
        }

        var cluster = Qcow2Entries.HostOffset(standard);
        if (((bitmap >> sub) & 1) != 0)
        {
            if (cluster == 0 || (cluster & g.ClusterMask) != 0)
            {
                throw new Qcow2Corruption($"L2 table at offset {table.Offset}, entry {index}: subcluster {sub} is allocated but the cluster offset {cluster} is not valid");
            }

            return (Qcow2ClusterKind.Normal, cluster + ((long)sub << g.SubclusterBits), (standard & Qcow2Entries.Copied) != 0, standard);
        }

        // A subcluster that is not allocated may still sit in an allocated cluster: its host offset is known
        // (QEMU reports it, as ZERO_ALLOC and UNALLOCATED_ALLOC).
        var subHost = cluster != 0 ? cluster + ((long)sub << g.SubclusterBits) : -1;
        return ((bitmap >> (32 + sub)) & 1) != 0
            ? (Qcow2ClusterKind.Zero, subHost, false, standard)
            : (Qcow2ClusterKind.Unallocated, subHost, false, standard);
    }

    /// <summary>
    /// The L2 table for <paramref name="l1Index"/>, made writable: allocated when the L1 entry is empty,
    /// copied when it is shared with a snapshot. The new table reaches the disk before its L1 entry.
    /// </summary>
    async ValueTask<Qcow2Table> GetL2ForWriteAsync(long l1Index, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var entry = _l1[l1Index];
        var old = L2TableOffset(l1Index);
        if (old != 0 && (entry & Qcow2Entries.Copied) != 0)
        {
            _file.DebugEvent(BlkdebugEvent.L2Load);
            return await _l2Cache.GetAsync(old, load: true, cancellationToken).ConfigureAwait(false);
        }

        var (cluster, _) = await AllocateClustersAsync(1, cancellationToken).ConfigureAwait(false);
        var offset = cluster << g.ClusterBits;
        byte[]? shared = null;
        if (old != 0)
        {
            // A table shared with a snapshot: this image gets its own copy. The data clusters it points at
            // already count both references (a snapshot raises them all), so only the table changes hands.
            _file.DebugEvent(BlkdebugEvent.L2AllocCowRead);
            var oldTable = await _l2Cache.GetAsync(old, load: true, cancellationToken).ConfigureAwait(false);
            shared = oldTable.Span.ToArray();
        }

        var table = await _l2Cache.GetAsync(offset, load: false, cancellationToken).ConfigureAwait(false);
        shared?.CopyTo(table.Span);

        // Its refcount, then the table, then the L1 entry that points at it. The flush between table and entry is
        // kept with lazy refcounts too (as QEMU's l2_allocate keeps it): the repair of a dirty image recounts
        // references, but an L1 entry that reached the disk before its table would point at whatever the cluster
        // held before (data, once it is reused), and no repair turns that back into a table.
        await BeforeMetadataWriteAsync(cancellationToken).ConfigureAwait(false);
        await MakeRefcountsDurableAsync(cancellationToken).ConfigureAwait(false);
        _file.DebugEvent(BlkdebugEvent.L2AllocWrite);
        await _file.WriteAsync(offset, table.Memory, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        table.Dirty = false;
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);

        _l1[l1Index] = (ulong)offset | Qcow2Entries.Copied;
        await WriteL1EntryAsync(l1Index, cancellationToken).ConfigureAwait(false);
        _l2Offsets.Add(offset);
        if (old != 0)
        {
            _l2Offsets.Remove(old);
            _l2Cache.Forget(old);
            await ReleaseUnlinkedAsync([old >> g.ClusterBits], punch: false, cancellationToken).ConfigureAwait(false);
        }

        return table;
    }

    /// <summary>Writes the block of the on-disk L1 table that holds entry <paramref name="index"/>.</summary>
    async ValueTask WriteL1EntryAsync(long index, CancellationToken cancellationToken)
    {
        _file.DebugEvent(BlkdebugEvent.L1Update);
        await WriteEntryBlockAsync(_l1, Header.L1TableOffset, index, cancellationToken).ConfigureAwait(false);
    }

    async ValueTask WriteEntryBlockAsync(ulong[] entries, long tableOffset, long index, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var unit = Math.Max(_fileAlignment, 8);
        var start = index * 8 / unit * unit;
        var tableBytes = g.ClustersFor((long)entries.Length * 8) << g.ClusterBits;
        var end = Math.Min(tableBytes, (index * 8 + 8 + unit - 1) / unit * unit);
        var bytes = new byte[end - start];
        for (var i = start / 8; i < end / 8 && i < entries.Length; i++)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan((int)(i * 8 - start)), entries[i]);
        }

        await BeforeMetadataWriteAsync(cancellationToken).ConfigureAwait(false);
        await EnsureFileLengthAsync(tableOffset + end, cancellationToken).ConfigureAwait(false);
        await _file.WriteAsync(tableOffset + start, bytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// First half of an allocating write of <paramref name="clusters"/> guest clusters from
    /// <paramref name="guestOffset"/> (inside one L2 table): makes the L2 table writable and reserves host
    /// clusters. <c>KnownZero</c>: the host clusters were never written, so they read as zeroes.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<(long Host, bool KnownZero)> ReserveDataClustersAsync(long guestOffset, long clusters, CancellationToken cancellationToken)
    {
        await GetL2ForWriteAsync(Geometry.L1Index(guestOffset), cancellationToken).ConfigureAwait(false);
        var (first, knownZero) = await AllocateClustersAsync(clusters, cancellationToken).ConfigureAwait(false);
        var host = first << Geometry.ClusterBits;
        if (OverlapsMetadata(host, clusters << Geometry.ClusterBits))
        {
            throw new Qcow2Corruption($"the allocator chose clusters at offset {host} that hold metadata (refcounts are wrong)");
        }

        return (host, knownZero);
    }

    /// <summary>Gives back clusters reserved for a write that failed before its L2 entries were set.</summary>
    public async ValueTask UnreserveDataClustersAsync(long host, long clusters, CancellationToken cancellationToken)
    {
        var first = host >> Geometry.ClusterBits;
        for (var c = first; c < first + clusters; c++)
        {
            await UpdateRefcountAsync(c, -1, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Second half of an allocating write, once the data is in the file: points the L2 entries at the new
    /// clusters, and releases what they pointed at before (compressed or shared clusters, preallocated zeroes).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask CommitDataClustersAsync(long guestOffset, long clusters, long host, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var table = await GetL2ForWriteAsync(g.L1Index(guestOffset), cancellationToken).ConfigureAwait(false);
        var index = g.L2Index(guestOffset);
        List<long>? released = null;
        for (var i = 0; i < clusters; i++)
        {
            var old = table.ReadUInt64(index + i);
            table.WriteUInt64(index + i, (ulong)(host + (i << g.ClusterBits)) | Qcow2Entries.Copied);
            AddReleased(old, ref released);
        }

        table.Dirty = true;
        if (released is not null)
        {
            await ReleaseUnlinkedAfterWriteBackAsync(released, punch: false, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Zeroes or discards whole clusters [offset, offset + count × cluster size), inside one L2 table.
    /// <paramref name="hasBacking"/>: an unallocated cluster must then be marked zero to hide the backing data.
    /// </summary>
    public async ValueTask UpdateClustersAsync(long offset, long count, ClusterUpdate update, bool hasBacking, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var l1Index = g.L1Index(offset);
        var v3 = Header.Version >= 3;
        var unallocate = update is ClusterUpdate.Unallocate or ClusterUpdate.Crop;
        if (_l1[l1Index] == 0 && (unallocate || !(hasBacking && v3)))
        {
            // Nothing is allocated under an empty L1 entry, and without a backing file it reads as zeroes.
            return;
        }

        var table = await GetL2ForWriteAsync(l1Index, cancellationToken).ConfigureAwait(false);
        var index = g.L2Index(offset);
        List<long>? released = null;
        var changed = false;
        for (var i = 0; i < count; i++)
        {
            var old = table.ReadUInt64(index + i);
            var host = Qcow2Entries.HostOffset(old);
            var compressed = (old & Qcow2Entries.Compressed) != 0;
            var owned = !compressed && host != 0;
            ulong entry;
            if (!v3 || unallocate)
            {
                // Version 2 has no zero flag; callers send zeroing here only when there is no backing file,
                // where an unallocated cluster reads as zeroes.
                entry = 0;
            }
            else if (update == ClusterUpdate.ZeroKeepingHost && owned && (old & Qcow2Entries.Copied) != 0)
            {
                entry = (ulong)host | Qcow2Entries.Copied | Qcow2Entries.Zero;
            }
            else if (compressed || owned || hasBacking)
            {
                entry = Qcow2Entries.Zero;
            }
            else
            {
                entry = old;
            }

            if (entry == old)
            {
                continue;
            }

            table.WriteUInt64(index + i, entry);
            changed = true;
            if (compressed || (owned && Qcow2Entries.HostOffset(entry) != host))
            {
                AddReleased(old, ref released);
            }
        }

        if (changed)
        {
            table.Dirty = true;
        }

        if (released is not null)
        {
            var punch = update == ClusterUpdate.Crop || Discard == Block.Drivers.File.FileDiscardMode.Unmap;
            await ReleaseUnlinkedAfterWriteBackAsync(released, punch, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Adds the host clusters an old L2 entry held (one reference each) to <paramref name="released"/>.</summary>
    void AddReleased(ulong old, ref List<long>? released)
    {
        var g = Geometry;
        if ((old & Qcow2Entries.Compressed) != 0)
        {
            var (_, spanStart, spanLength) = g.DecodeCompressed(old);
            released ??= [];
            for (var c = spanStart >> g.ClusterBits; c <= (spanStart + spanLength - 1) >> g.ClusterBits; c++)
            {
                released.Add(c);
            }

            return;
        }

        var host = Qcow2Entries.HostOffset(old);
        if (host != 0)
        {
            released ??= [];
            released.Add(host >> g.ClusterBits);
        }
    }
}
