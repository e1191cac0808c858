using System.Buffers.Binary;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

// Refcounts: reading and changing them, finding free clusters, new refcount blocks, a larger refcount table.
internal sealed partial class Qcow2Image
{
    /// <summary>Reads refcount <paramref name="index"/> of a refcount block with 2^<paramref name="order"/>-bit entries.</summary>
    public static ulong ReadRefcount(ReadOnlySpan<byte> block, long index, int order) => order switch
    {
        6 => BinaryPrimitives.ReadUInt64BigEndian(block[(int)(index * 8)..]),
        5 => BinaryPrimitives.ReadUInt32BigEndian(block[(int)(index * 4)..]),
        4 => BinaryPrimitives.ReadUInt16BigEndian(block[(int)(index * 2)..]),
        3 => block[(int)index],
        // Sub-byte entries: entry i sits at bit (i * bits) mod 8 of byte (i * bits) / 8, least significant first.
        _ => (ulong)((block[(int)((index << order) >> 3)] >> (int)((index << order) & 7)) & ((1 << (1 << order)) - 1)),
    };

    public static void WriteRefcount(Span<byte> block, long index, int order, ulong value)
    {
        switch (order)
        {
            case 6:
                BinaryPrimitives.WriteUInt64BigEndian(block[(int)(index * 8)..], value);
                break;
            case 5:
                BinaryPrimitives.WriteUInt32BigEndian(block[(int)(index * 4)..], (uint)value);
                break;
            case 4:
                BinaryPrimitives.WriteUInt16BigEndian(block[(int)(index * 2)..], (ushort)value);
                break;
            case 3:
                block[(int)index] = (byte)value;
                break;
            default:
                var bit = (int)((index << order) & 7);
                var mask = ((1 << (1 << order)) - 1) << bit;
                ref var b = ref block[(int)((index << order) >> 3)];
                b = (byte)((b & ~mask) | (((int)value << bit) & mask));
                break;
        }
    }

    /// <summary>The refcount of a host cluster (0 where no refcount block covers it).</summary>
    public async ValueTask<ulong> GetRefcountAsync(long cluster, CancellationToken cancellationToken)
    {
        var tableIndex = cluster >> Geometry.RefblockBits;
        if (tableIndex >= _reftable.Length || _reftable[tableIndex] == 0)
        {
            return 0;
        }

        var block = await _refblockCache.GetAsync(RefblockOffset(tableIndex), load: true, cancellationToken).ConfigureAwait(false);
        return ReadRefcount(block.Span, cluster & (Geometry.RefblockEntries - 1), Geometry.RefcountOrder);
    }

    /// <summary>Adds <paramref name="delta"/> (±1) to a cluster's refcount in the cache; returns the new value.</summary>
    async ValueTask<ulong> UpdateRefcountAsync(long cluster, int delta, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var tableIndex = cluster >> g.RefblockBits;
        if (tableIndex >= _reftable.Length || _reftable[tableIndex] == 0)
        {
            throw new Qcow2Corruption($"cluster {cluster} has no refcount block, yet its refcount is to change by {delta}");
        }

        var block = await _refblockCache.GetAsync(RefblockOffset(tableIndex), load: true, cancellationToken).ConfigureAwait(false);
        var index = cluster & (g.RefblockEntries - 1);
        var value = ReadRefcount(block.Span, index, g.RefcountOrder);
        if (delta < 0 && value == 0)
        {
            throw new Qcow2Corruption($"the refcount of cluster {cluster} would drop below zero");
        }

        if (delta > 0 && value == g.MaxRefcount)
        {
            throw new IOException($"qcow2 image '{Name}': the refcount of cluster {cluster} would exceed {g.MaxRefcount}, the largest {g.RefcountBits}-bit refcount");
        }

        value = delta > 0 ? value + 1 : value - 1;
        WriteRefcount(block.Span, index, g.RefcountOrder, value);
        block.Dirty = true;
        if (delta > 0)
        {
            _l2NeedsRefcountsFirst = true;
        }
        else if (value == 0 && cluster < _freeClusterHint)
        {
            _freeClusterHint = cluster;
        }

        return value;
    }

    /// <summary>
    /// Allocates <paramref name="count"/> contiguous clusters (refcount 0 → 1, in the cache) and makes the file
    /// long enough to hold them. <c>KnownZero</c>: none of them was written since the image was opened.
    /// </summary>
    async ValueTask<(long Cluster, bool KnownZero)> AllocateClustersAsync(long count, CancellationToken cancellationToken)
    {
        var g = Geometry;
        _file.DebugEvent(BlkdebugEvent.ClusterAlloc);
        while (true)
        {
            var start = await FindFreeRunAsync(count, cancellationToken).ConfigureAwait(false);
            if (HasMissingRefblock(start, count))
            {
                // Blocks go after the run and the file, so the run stays whole: look again afterwards.
                await CreateRefblocksAsync(start, count, cancellationToken).ConfigureAwait(false);
                continue;
            }

            if (OverlapsMetadata(start << g.ClusterBits, count << g.ClusterBits))
            {
                // Refcounts call clusters free that hold the header or a table: allocating them would destroy it.
                throw new Qcow2Corruption($"refcounts say clusters {start}..{start + count - 1} are free, but they hold metadata");
            }

            for (var c = start; c < start + count; c++)
            {
                await UpdateRefcountAsync(c, +1, cancellationToken).ConfigureAwait(false);
            }

            if (_freeClusterHint == start)
            {
                _freeClusterHint = start + count;
            }

            var knownZero = start >= _untouchedFrom;
            _untouchedFrom = Math.Max(_untouchedFrom, start + count);
            await EnsureFileLengthAsync((start + count) << g.ClusterBits, cancellationToken).ConfigureAwait(false);
            return (start, knownZero);
        }
    }

    /// <summary>
    /// The first run of <paramref name="count"/> clusters from the free hint that have refcount 0 and no data
    /// request in flight. Changes nothing but the hint, which moves to the first free cluster seen.
    /// </summary>
    async ValueTask<long> FindFreeRunAsync(long count, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var cluster = _freeClusterHint;
        var runStart = cluster;
        var run = 0L;
        var firstFree = -1L;
        while (run < count)
        {
            var tableIndex = cluster >> g.RefblockBits;
            if (tableIndex >= _reftable.Length || _reftable[tableIndex] == 0)
            {
                // No refcount block: every cluster it would describe is free, and none can be in flight.
                var blockEnd = (tableIndex + 1) << g.RefblockBits;
                var take = Math.Min(blockEnd - cluster, count - run);
                if (firstFree < 0)
                {
                    firstFree = cluster;
                }

                run += take;
                cluster += take;
                continue;
            }

            var block = await _refblockCache.GetAsync(RefblockOffset(tableIndex), load: true, cancellationToken).ConfigureAwait(false);
            var free = ReadRefcount(block.Span, cluster & (g.RefblockEntries - 1), g.RefcountOrder) == 0 &&
                !HostInFlight.Overlaps(cluster << g.ClusterBits, (cluster + 1) << g.ClusterBits);
            if (free)
            {
                if (firstFree < 0)
                {
                    firstFree = cluster;
                }

                run++;
            }
            else
            {
                run = 0;
                runStart = cluster + 1;
            }

            cluster++;
        }

        _freeClusterHint = firstFree;
        return runStart;
    }

    bool HasMissingRefblock(long start, long count)
    {
        var g = Geometry;
        for (var block = start >> g.RefblockBits; block <= (start + count - 1) >> g.RefblockBits; block++)
        {
            if (block >= _reftable.Length || _reftable[block] == 0)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Creates the refcount blocks that clusters [start, start + count) lack. They are placed after the end
    /// of the file and of that run (never inside the run, which would split it), together with any further
    /// blocks needed to count themselves; written and flushed before the refcount table points at them.
    /// A table too small for them is grown instead, and the caller looks again.
    /// </summary>
    async ValueTask CreateRefblocksAsync(long start, long count, CancellationToken cancellationToken)
    {
        var g = Geometry;
        _file.DebugEvent(BlkdebugEvent.RefblockAlloc);
        var area = Math.Max(_untouchedFrom, start + count);
        var missing = new SortedSet<long>();
        var placed = 0;
        while (true)
        {
            // The blocks the run lacks, and those lacking for the area the new blocks themselves take.
            missing.Clear();
            AddMissing(start, start + count);
            AddMissing(area, area + placed);
            if (missing.Count == placed)
            {
                break;
            }

            placed = missing.Count;
        }

        void AddMissing(long from, long to)
        {
            for (var block = from >> g.RefblockBits; from < to && block <= (to - 1) >> g.RefblockBits; block++)
            {
                if (block >= _reftable.Length || _reftable[block] == 0)
                {
                    missing.Add(block);
                }
            }
        }

        if (missing.Max >= _reftable.Length)
        {
            await GrowRefcountTableAsync(missing.Max, cancellationToken).ConfigureAwait(false);
            return;
        }

        var blocks = missing.Count;
        var areaEnd = area + blocks;
        if (OverlapsMetadata(area << g.ClusterBits, (long)blocks << g.ClusterBits))
        {
            throw new Qcow2Corruption($"refcounts say clusters {area}..{areaEnd - 1} are free, but they hold metadata");
        }

        await BeforeMetadataWriteAsync(cancellationToken).ConfigureAwait(false);
        var bytes = new byte[(long)blocks << g.ClusterBits];
        var slot = new Dictionary<long, int>();
        foreach (var block in missing)
        {
            slot[block] = slot.Count;
        }

        // Each new block's cluster is in use: counted in the new block that covers it, or an existing one.
        for (var c = area; c < areaEnd; c++)
        {
            if (slot.TryGetValue(c >> g.RefblockBits, out var s))
            {
                WriteRefcount(bytes.AsSpan(s << g.ClusterBits, g.ClusterSize), c & (g.RefblockEntries - 1), g.RefcountOrder, 1);
            }
            else
            {
                await UpdateRefcountAsync(c, +1, cancellationToken).ConfigureAwait(false);
            }
        }

        await EnsureFileLengthAsync(areaEnd << g.ClusterBits, cancellationToken).ConfigureAwait(false);
        await _file.WriteAsync(area << g.ClusterBits, bytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        await MakeRefcountsDurableAsync(cancellationToken).ConfigureAwait(false);
        // Flushed before the refcount table points at them, lazy refcounts or not (as QEMU's alloc_refcount_block):
        // a table entry that reached the disk first would name a block of whatever the cluster held before.
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);

        foreach (var (block, s) in slot)
        {
            var offset = (area + s) << g.ClusterBits;
            _reftable[block] = (ulong)offset;
            _refblockOffsets.Add(offset);
            await WriteEntryBlockAsync(_reftable, Header.RefcountTableOffset, block, cancellationToken).ConfigureAwait(false);
        }

        _untouchedFrom = Math.Max(_untouchedFrom, areaEnd);
    }

    /// <summary>
    /// Moves the refcount table to a larger one with an entry <paramref name="neededIndex"/>. The new table and
    /// the refcount blocks it needs to count itself go after the end of the file; they are written and
    /// flushed before the header points at them, and the old table is freed only after that.
    /// </summary>
    async ValueTask GrowRefcountTableAsync(long neededIndex, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var entriesPerCluster = g.ClusterSize / 8;
        var wanted = Math.Max(neededIndex + 1, (long)_reftable.Length * 2);
        var area = _untouchedFrom;
        long tableClusters, blocks = 0;
        while (true)
        {
            tableClusters = (wanted + entriesPerCluster - 1) / entriesPerCluster;
            var end = area + blocks + tableClusters;
            var lastBlock = (end - 1) >> g.RefblockBits;
            if (lastBlock >= tableClusters * entriesPerCluster)
            {
                wanted = lastBlock + 1;
                continue;
            }

            var needed = 0L;
            for (var b = area >> g.RefblockBits; b <= lastBlock; b++)
            {
                if (b >= _reftable.Length || _reftable[b] == 0)
                {
                    needed++;
                }
            }

            if (needed == blocks)
            {
                break;
            }

            blocks = needed;
        }

        if (tableClusters << g.ClusterBits > Qcow2Header.MaxRefcountTableBytes)
        {
            throw new IOException($"qcow2 image '{Name}': the refcount table would grow past {Qcow2Header.MaxRefcountTableBytes >> 20} MiB, QEMU's limit");
        }

        await BeforeMetadataWriteAsync(cancellationToken).ConfigureAwait(false);
        var table = new ulong[tableClusters * entriesPerCluster];
        _reftable.CopyTo(table, 0);
        var newBlocks = new byte[blocks << g.ClusterBits];
        var blockOf = new Dictionary<long, long>();
        var next = area;
        for (var b = area >> g.RefblockBits; blockOf.Count < blocks; b++)
        {
            if (b >= _reftable.Length || _reftable[b] == 0)
            {
                blockOf[b] = blockOf.Count;
                table[b] = (ulong)(next++ << g.ClusterBits);
            }
        }

        // Every cluster of the new area is in use: counted in its new block, or in an existing one.
        var areaEnd = area + blocks + tableClusters;
        for (var c = area; c < areaEnd; c++)
        {
            if (blockOf.TryGetValue(c >> g.RefblockBits, out var slot))
            {
                WriteRefcount(newBlocks.AsSpan((int)(slot << g.ClusterBits), g.ClusterSize), c & (g.RefblockEntries - 1), g.RefcountOrder, 1);
            }
            else
            {
                await UpdateRefcountAsync(c, +1, cancellationToken).ConfigureAwait(false);
            }
        }

        await EnsureFileLengthAsync(areaEnd << g.ClusterBits, cancellationToken).ConfigureAwait(false);
        if (blocks > 0)
        {
            await _file.WriteAsync(area << g.ClusterBits, newBlocks, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        }

        await StoreAsync(_refblockCache, _refblockCache.DirtyTables(), cancellationToken).ConfigureAwait(false);
        var tableBytes = new byte[tableClusters << g.ClusterBits];
        for (var i = 0; i < table.Length; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(tableBytes.AsSpan(i * 8), table[i]);
        }

        var tableOffset = (area + blocks) << g.ClusterBits;
        await _file.WriteAsync(tableOffset, tableBytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);

        var oldOffset = Header.RefcountTableOffset;
        var oldClusters = Header.RefcountTableClusters;
        Header.RefcountTableOffset = tableOffset;
        Header.RefcountTableClusters = (int)tableClusters;
        BinaryPrimitives.WriteUInt64BigEndian(_headerBlock.AsSpan(48), (ulong)tableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(_headerBlock.AsSpan(56), (uint)tableClusters);
        await WriteHeaderAsync(48, 60, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);

        _reftable = table;
        foreach (var (b, _) in blockOf)
        {
            _refblockOffsets.Add(Qcow2Entries.HostOffset(table[b]));
        }

        _untouchedFrom = Math.Max(_untouchedFrom, areaEnd);
        for (var c = oldOffset >> g.ClusterBits; c < (oldOffset >> g.ClusterBits) + oldClusters; c++)
        {
            await UpdateRefcountAsync(c, -1, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Drops one reference to each cluster in <paramref name="clusters"/>, after the caller's change that
    /// unlinked them in the L2 cache is written. Freed clusters are punched out of the file when
    /// <paramref name="punch"/>.
    /// </summary>
    async ValueTask ReleaseUnlinkedAfterWriteBackAsync(List<long> clusters, bool punch, CancellationToken cancellationToken)
    {
        await WriteBackL2Async(cancellationToken).ConfigureAwait(false);
        await ReleaseUnlinkedAsync(clusters, punch, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Drops one reference to each cluster, whose last pointer on disk is already gone.</summary>
    async ValueTask ReleaseUnlinkedAsync(List<long> clusters, bool punch, CancellationToken cancellationToken)
    {
        var g = Geometry;
        List<long>? freed = null;
        foreach (var cluster in clusters)
        {
            if (await UpdateRefcountAsync(cluster, -1, cancellationToken).ConfigureAwait(false) == 0 && punch)
            {
                (freed ??= []).Add(cluster);
            }
        }

        // Their new refcounts may reach the disk only after the unlinking did (a flush, unless lazy).
        _refcountsNeedL2Durable = true;
        if (freed is null)
        {
            return;
        }

        freed.Sort();
        for (var i = 0; i < freed.Count;)
        {
            var j = i + 1;
            while (j < freed.Count && freed[j] == freed[j - 1] + 1)
            {
                j++;
            }

            var start = freed[i] << g.ClusterBits;
            var end = Math.Min((freed[j - 1] + 1) << g.ClusterBits, _file.Node.Length);
            if (end > start)
            {
                await _file.DiscardAsync(start, end - start, cancellationToken).ConfigureAwait(false);
            }

            i = j;
        }
    }
}
