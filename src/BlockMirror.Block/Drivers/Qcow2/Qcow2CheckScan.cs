using System.Buffers.Binary;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// One pass over an image's metadata for <see cref="Qcow2Check"/>: counts the references to every host
/// cluster (header, L1 and L2 tables, data, refcount structures, snapshots, persistent bitmaps), reads the
/// stored refcounts, and collects every inconsistency instead of stopping at the first. Memory: four bytes
/// per cluster of the file.
/// </summary>
internal sealed class Qcow2CheckScan
{
    const int MaxSnapshots = 65536;

    readonly BlockNode _file;
    readonly List<string> _messages = [];

    // References counted per host cluster inside the file; references past its end are kept apart.
    readonly uint[] _references;
    readonly Dictionary<long, uint> _referencesBeyond = [];

    // Clusters of the refcount table and blocks: a rebuild replaces them, so they do not count then.
    readonly List<long> _refcountStructure = [];

    // The bitmap directory, read at open.
    IReadOnlyList<Qcow2BitmapEntry> _bitmaps = [];

    // Copied flags are judged against refcounts; before a repair of the refcounts that would be premature.
    readonly bool _checkCopied;

    Qcow2CheckScan(BlockNode file, Qcow2Header header, string name, bool checkCopied)
    {
        _checkCopied = checkCopied;
        _file = file;
        Header = header;
        Name = name;
        Geometry = new Qcow2Geometry(header);
        FileLength = file.Length;
        FileClusters = Geometry.ClustersFor(FileLength);
        _references = new uint[FileClusters];
    }

    public Qcow2Header Header { get; }

    public Qcow2Geometry Geometry { get; }

    public string Name { get; }

    public long FileLength { get; }

    public long FileClusters { get; }

    public ulong[] L1 { get; private set; } = [];

    public ulong[] Reftable { get; private set; } = [];

    /// <summary>Stored refcount blocks by refcount table index (only those whose pointer is valid).</summary>
    public Dictionary<long, byte[]> Refblocks { get; } = [];

    /// <summary>A refcount table entry is unusable: an in-place repair cannot work, a rebuild is needed.</summary>
    public bool RefcountStructureBroken { get; private set; }

    public long Corruptions { get; set; }

    public long Leaks { get; set; }

    public long CheckErrors { get; set; }

    public long Allocated { get; private set; }

    public long Fragmented { get; private set; }

    public long Compressed { get; private set; }

    public long HighestReferenced { get; private set; } = -1;

    /// <summary>The last cluster with a reference or a stored refcount: the image ends after it.</summary>
    public long HighestUsed { get; private set; } = -1;

    /// <summary>A referenced cluster has refcount 0: only a rebuilt refcount structure can hold it (QEMU's rule).</summary>
    public bool NeedsRebuild => RefcountStructureBroken || Mismatches.Exists(m => m.Stored == 0 && m.Referenced > 0);

    public List<string> Messages => _messages;

    // Refcount table entries whose block offset is unaligned (index to offset): none of their refcounts can be
    // read, as in QEMU, where each lookup fails with EIO.
    readonly Dictionary<long, long> _unreadableRefblocks = [];
    bool _reportedUnreadable;

    /// <summary>Clusters whose stored refcount differs from the references: (cluster, stored, referenced).</summary>
    public List<(long Cluster, ulong Stored, ulong Referenced)> Mismatches { get; } = [];

    /// <summary>Copied flags to set right: (is L1, table offset or L1 index, entry index, corrected entry).</summary>
    public List<(bool L1, long Table, int Index, ulong Entry)> CopiedFixes { get; } = [];

    public static async Task<Qcow2CheckScan> RunAsync(BlockNode file, string name, bool checkCopied, CancellationToken cancellationToken)
    {
        var first = await Qcow2Driver.ReadHeaderClusterAsync(file, cancellationToken).ConfigureAwait(false);
        var scan = new Qcow2CheckScan(file, Qcow2Header.Parse(first, name, check: true), name, checkCopied);
        // As qemu-img orders it: the bitmaps are loaded when the image is opened (the tables of those not in
        // use are read then), the snapshot table is read by the check itself.
        scan._bitmaps = await Qcow2BitmapDirectory.LoadAsync(scan.ReadClampedAsync, scan.Header, name, cancellationToken).ConfigureAwait(false);
        foreach (var bitmap in scan._bitmaps.Where(b => !b.InUse))
        {
            await Qcow2BitmapTable.LoadAsync(scan.ReadClampedAsync, bitmap, scan.Geometry, scan.Header.Size, name, cancellationToken).ConfigureAwait(false);
        }

        await scan.CheckSnapshotTableAsync(cancellationToken).ConfigureAwait(false);
        await scan.WalkAsync(cancellationToken).ConfigureAwait(false);
        return scan;
    }

    /// <summary>
    /// The snapshot table as qemu-img's check reads it before anything else (qcow2_check_read_snapshot_table):
    /// too many snapshots, an invalid offset or an entry it cannot read end the check with an error.
    /// </summary>
    async Task CheckSnapshotTableAsync(CancellationToken cancellationToken)
    {
        if (Header.NbSnapshots > Qcow2Header.MaxSnapshots)
        {
            throw new Qcow2CheckFailedException("ERROR snapshot table too large", BlockErrno.EFBIG);
        }

        var entriesEnd = (ulong)Header.NbSnapshots * Qcow2Header.SnapshotHeaderLength;
        if ((ulong)long.MaxValue - entriesEnd < (ulong)Header.SnapshotsOffset || (Header.SnapshotsOffset & Geometry.ClusterMask) != 0)
        {
            throw new Qcow2CheckFailedException("ERROR snapshot table offset invalid", BlockErrno.EINVAL);
        }

        try
        {
            await Qcow2Snapshots.ReadAsync(ReadClampedAsync, Header, Name, cancellationToken).ConfigureAwait(false);
        }
        catch (Qcow2Exception e)
        {
            throw new Qcow2CheckFailedException($"ERROR failed to read the snapshot table: {e.Message}", e.Errno);
        }
    }

    async Task WalkAsync(CancellationToken cancellationToken)
    {
        var g = Geometry;
        Reference(0, g.ClusterSize);

        // The stored refcounts first: the copied flags of the active tables are checked against them on the way.
        Reftable = await ReadEntriesAsync(Header.RefcountTableOffset, Header.RefcountTableClusters * (g.ClusterSize / 8), cancellationToken).ConfigureAwait(false);
        Reference(Header.RefcountTableOffset, (long)Header.RefcountTableClusters << g.ClusterBits, refcountStructure: true);
        for (var i = 0; i < Reftable.Length; i++)
        {
            var entry = Reftable[i];
            if (entry == 0)
            {
                continue;
            }

            var offset = Qcow2Entries.HostOffset(entry);
            var reserved = (entry & ~Qcow2Entries.OffsetMask) != 0;
            if (reserved)
            {
                // qemu-img's verdict: the block is not counted as a reference, but its refcounts are still
                // read (the reserved bits are masked off where refcounts are looked up).
                Corruption($"ERROR refcount table entry {i} has reserved bits set");
                RefcountStructureBroken = true;
            }
            else if ((offset & g.ClusterMask) != 0)
            {
                // No refcount of the clusters this block covers can be read: each is a check error.
                Corruption($"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted");
                RefcountStructureBroken = true;
                _unreadableRefblocks.Add(i, offset);
                continue;
            }

            if (offset == 0 || (offset & g.ClusterMask) != 0)
            {
                continue;
            }

            if (offset >= FileLength)
            {
                Corruption($"ERROR refcount block {i} is outside image");
                RefcountStructureBroken = true;
                continue;
            }

            if (!reserved)
            {
                Reference(offset, g.ClusterSize, refcountStructure: true);
            }

            var block = new byte[g.ClusterSize];
            await ReadClampedAsync(offset, block, cancellationToken).ConfigureAwait(false);
            Refblocks[i] = block;
        }

        L1 = await ReadEntriesAsync(Header.L1TableOffset, Header.L1Size, cancellationToken).ConfigureAwait(false);
        Reference(Header.L1TableOffset, (long)Header.L1Size * 8);
        await WalkL1Async(L1, active: true, cancellationToken).ConfigureAwait(false);
        await WalkSnapshotsAsync(cancellationToken).ConfigureAwait(false);
        await WalkBitmapsAsync(cancellationToken).ConfigureAwait(false);
        CompareRefcounts();
    }

    /// <summary>Counts one reference to every cluster of [offset, offset + length).</summary>
    void Reference(long offset, long length, bool refcountStructure = false)
    {
        if (length <= 0)
        {
            return;
        }

        var g = Geometry;
        if (offset + length - g.ClusterSize >= FileLength)
        {
            // qemu-img's rule: a region that ends a whole cluster or more past the end of the file is not counted.
            Corruption($"ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x{offset:x} size 0x{length:x}");
            return;
        }

        for (var c = offset >> g.ClusterBits; c <= (offset + length - 1) >> g.ClusterBits; c++)
        {
            if (c < FileClusters)
            {
                _references[c]++;
            }
            else
            {
                _referencesBeyond[c] = _referencesBeyond.GetValueOrDefault(c) + 1;
            }

            HighestReferenced = Math.Max(HighestReferenced, c);
            if (refcountStructure)
            {
                _refcountStructure.Add(c);
            }
        }
    }

    void Corruption(string message)
    {
        Corruptions++;
        _messages.Add(message);
    }

    async Task WalkL1Async(ulong[] l1, bool active, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var table = new byte[g.ClusterSize];
        for (var i = 0; i < l1.Length; i++)
        {
            // qemu-img's rule: any non-zero entry is walked, even one whose offset bits are zero (it then
            // points at the header cluster).
            var offset = Qcow2Entries.HostOffset(l1[i]);
            if (l1[i] == 0)
            {
                continue;
            }

            if ((l1[i] & Qcow2Entries.L1ReservedMask) != 0)
            {
                Corruption($"ERROR found L1 entry with reserved bits set: {l1[i]:x}");
            }

            Reference(offset, g.ClusterSize);
            if ((offset & g.ClusterMask) != 0)
            {
                Corruption($"ERROR l2_offset={offset:x}: Table is not cluster aligned; L1 entry corrupted");
                continue;
            }

            if (offset >= FileLength)
            {
                // Reported as a reference past the end of the file; there is nothing to read.
                continue;
            }

            if (active && offset != 0)
            {
                CheckCopied(l1[i], offset, () => ($"ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1[i]:x}", true, 0, i));
            }

            await ReadClampedAsync(offset, table, cancellationToken).ConfigureAwait(false);
            WalkL2(table, offset, (long)i << (g.L2Bits + g.ClusterBits), active);
        }
    }

    void WalkL2(byte[] table, long tableOffset, long guestBase, bool active)
    {
        var g = Geometry;
        var nextContiguous = 0L;
        for (var i = 0; i < g.L2Entries; i++)
        {
            var entry = BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * g.L2EntrySize));
            var bitmap = g.ExtendedL2 ? BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * g.L2EntrySize + 8)) : 0;
            if (guestBase + ((long)i << g.ClusterBits) >= Header.Size && entry == 0)
            {
                continue;
            }

            if ((entry & Qcow2Entries.Compressed) != 0)
            {
                if ((entry & Qcow2Entries.Copied) != 0)
                {
                    Corruption($"ERROR: coffset={entry & Qcow2Entries.DescriptorMask:x}: copied flag must never be set for compressed clusters");
                }

                if (g.ExtendedL2 && bitmap != 0)
                {
                    Corruption($"ERROR compressed cluster {i} of the L2 table at {tableOffset:x} has a non-zero subcluster bitmap");
                }

                var (_, spanStart, spanLength) = g.DecodeCompressed(entry);
                Reference(spanStart, spanLength);
                if (active)
                {
                    Allocated++;
                    Compressed++;
                    Fragmented++;
                }

                continue;
            }

            if (g.ExtendedL2 && (bitmap & (bitmap >> 32) & 0xffffffffUL) != 0)
            {
                Corruption($"ERROR: invalid subcluster allocation bitmap in entry {i} of the L2 table at {tableOffset:x}");
            }

            var host = Qcow2Entries.HostOffset(entry);
            if (host == 0)
            {
                continue;
            }

            if (!g.ExtendedL2 && (entry & Qcow2Entries.L2ReservedMask) != 0)
            {
                Corruption($"ERROR found l2 entry with reserved bits set: {entry:x}");
            }

            if ((host & g.ClusterMask) != 0)
            {
                Corruption($"ERROR offset={host:x}: Data cluster is not properly aligned; L2 entry corrupted.");
                continue;
            }

            Reference(host, g.ClusterSize);
            if (active)
            {
                var index = i;
                CheckCopied(entry, host, () => ($"ERROR OFLAG_COPIED data cluster: l2_entry={entry:x}", false, tableOffset, index));
                Allocated++;
                if (nextContiguous != 0 && host != nextContiguous)
                {
                    Fragmented++;
                }

                nextContiguous = host + g.ClusterSize;
            }
        }
    }

    /// <summary>Internal snapshots: their table, and the L1/L2 tables and data they keep (shared clusters count once per snapshot).</summary>
    async Task WalkSnapshotsAsync(CancellationToken cancellationToken)
    {
        if (Header.NbSnapshots == 0)
        {
            return;
        }

        if (Header.NbSnapshots > MaxSnapshots)
        {
            Corruption($"ERROR: {Header.NbSnapshots} snapshots exceed the limit of {MaxSnapshots}; snapshots not checked");
            return;
        }

        var position = Header.SnapshotsOffset;
        var head = new byte[40];
        for (var s = 0; s < Header.NbSnapshots; s++)
        {
            if (position + head.Length > FileLength)
            {
                Corruption($"ERROR: snapshot table entry {s} is outside image");
                return;
            }

            await ReadClampedAsync(position, head, cancellationToken).ConfigureAwait(false);
            var l1Offset = (long)(BinaryPrimitives.ReadUInt64BigEndian(head) & long.MaxValue);
            var l1Size = BinaryPrimitives.ReadUInt32BigEndian(head.AsSpan(8));
            var idSize = BinaryPrimitives.ReadUInt16BigEndian(head.AsSpan(12));
            var nameSize = BinaryPrimitives.ReadUInt16BigEndian(head.AsSpan(14));
            var extraSize = BinaryPrimitives.ReadUInt32BigEndian(head.AsSpan(36));
            position += (40 + extraSize + idSize + nameSize + 7) & ~7L;
            if (l1Size > Qcow2Header.MaxL1TableBytes / 8 || (l1Offset & Geometry.ClusterMask) != 0 || l1Offset + (long)l1Size * 8 > FileLength)
            {
                Corruption($"ERROR: snapshot {s}: its L1 table (offset {l1Offset}, {l1Size} entries) is invalid");
                continue;
            }

            Reference(l1Offset, (long)l1Size * 8);
            var l1 = await ReadEntriesAsync(l1Offset, (int)l1Size, cancellationToken).ConfigureAwait(false);
            await WalkL1Async(l1, active: false, cancellationToken).ConfigureAwait(false);
        }

        Reference(Header.SnapshotsOffset, position - Header.SnapshotsOffset);
    }

    /// <summary>
    /// Persistent dirty bitmaps (directory read at open): the directory, each table and its data clusters, as
    /// QEMU's qcow2_check_bitmaps_refcounts counts them. A table with an invalid entry (only one of a bitmap in
    /// use gets here: the others were read at open) ends the check, as QEMU's fails with EINVAL and no message.
    /// </summary>
    async Task WalkBitmapsAsync(CancellationToken cancellationToken)
    {
        if (Header.Bitmaps is not { } extension)
        {
            return;
        }

        Reference(extension.DirectoryOffset, extension.DirectorySize);
        foreach (var bitmap in _bitmaps)
        {
            Reference(bitmap.TableOffset, (long)bitmap.TableSize * 8);
            if (await Qcow2BitmapTable.ReadAsync(ReadClampedAsync, bitmap, Geometry.ClusterSize, cancellationToken).ConfigureAwait(false) is not { } table)
            {
                throw new Qcow2CheckFailedException("", BlockErrno.EINVAL);
            }

            foreach (var entry in table)
            {
                if ((entry & Qcow2BitmapTable.OffsetMask) is not 0 and var data)
                {
                    Reference((long)data, Geometry.ClusterSize);
                }
            }
        }
    }

    /// <summary>The refcount a cluster has on disk (or after repairs made to <see cref="Refblocks"/>).</summary>
    public ulong Stored(long cluster)
    {
        var g = Geometry;
        return Refblocks.TryGetValue(cluster >> g.RefblockBits, out var block)
            ? Qcow2Image.ReadRefcount(block, cluster & (g.RefblockEntries - 1), g.RefcountOrder)
            : 0;
    }

    /// <summary>References counted for a cluster.</summary>
    public ulong Referenced(long cluster) =>
        cluster < FileClusters ? _references[cluster] : _referencesBeyond.GetValueOrDefault(cluster);

    /// <summary>The references a rebuilt refcount structure must record for clusters inside the file (its own clusters not included).</summary>
    public uint[] ReferencesWithoutRefcountStructure()
    {
        var counts = (uint[])_references.Clone();
        foreach (var c in _refcountStructure)
        {
            if (c < counts.Length && counts[c] > 0)
            {
                counts[c]--;
            }
        }

        return counts;
    }

    void CompareRefcounts()
    {
        var g = Geometry;
        var clusters = new SortedSet<long>(_referencesBeyond.Keys);
        foreach (var (index, block) in Refblocks)
        {
            for (var j = 0L; j < g.RefblockEntries; j++)
            {
                var c = (index << g.RefblockBits) + j;
                if (c >= FileClusters && Qcow2Image.ReadRefcount(block, j, g.RefcountOrder) != 0)
                {
                    clusters.Add(c);
                }
            }
        }

        for (var c = 0L; c < FileClusters; c++)
        {
            Compare(c);
        }

        foreach (var c in clusters)
        {
            Compare(c);
        }

        void Compare(long cluster)
        {
            if (_unreadableRefblocks.Count > 0 && _unreadableRefblocks.TryGetValue(cluster >> g.RefblockBits, out var refblock))
            {
                if (!_reportedUnreadable)
                {
                    _reportedUnreadable = true;
                    _messages.Add($"qcow2: Image is corrupt: Refblock offset 0x{refblock:x} unaligned (reftable index: 0x{cluster >> g.RefblockBits:x}); further non-fatal corruption events will be suppressed");
                }

                _messages.Add($"Can't get refcount for cluster {cluster}: Input/output error");
                CheckErrors++;
                return;
            }

            var stored = Stored(cluster);
            var referenced = Referenced(cluster);
            if (stored != 0 || referenced != 0)
            {
                HighestUsed = Math.Max(HighestUsed, cluster);
            }

            if (stored == referenced)
            {
                return;
            }

            Mismatches.Add((cluster, stored, referenced));
            if (stored > referenced)
            {
                Leaks++;
                _messages.Add($"Leaked cluster {cluster} refcount={stored} reference={referenced}");
            }
            else
            {
                Corruption($"ERROR cluster {cluster} refcount={stored} reference={referenced}");
            }
        }
    }

    /// <summary>Bit 63 of an active L1 or L2 entry must be set exactly when the stored refcount is one.</summary>
    void CheckCopied(ulong entry, long offset, Func<(string Message, bool L1, long Table, int Index)> describe)
    {
        if (!_checkCopied || _unreadableRefblocks.ContainsKey(offset >> Geometry.ClusterBits >> Geometry.RefblockBits))
        {
            return;
        }

        var refcount = Stored(offset >> Geometry.ClusterBits);
        var want = refcount == 1;
        if (want == ((entry & Qcow2Entries.Copied) != 0))
        {
            return;
        }

        var (message, l1, table, index) = describe();
        Corruption($"{message} refcount={refcount}");
        CopiedFixes.Add((l1, table, index, want ? entry | Qcow2Entries.Copied : entry & ~Qcow2Entries.Copied));
    }

    public async Task<ulong[]> ReadEntriesAsync(long offset, int count, CancellationToken cancellationToken)
    {
        var bytes = new byte[(long)count * 8];
        await ReadClampedAsync(offset, bytes, cancellationToken).ConfigureAwait(false);
        var entries = new ulong[count];
        for (var i = 0; i < count; i++)
        {
            entries[i] = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(i * 8));
        }

        return entries;
    }

    ValueTask ReadClampedAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        Qcow2FileReads.ReadClampedAsync(_file.ReadAsync, FileLength, _file.Limits.RequestAlignment, offset, buffer, cancellationToken);
}
