namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// The sizes an image's header fixes: cluster, L2 table, subcluster and refcount block geometry, and the
/// arithmetic between guest offsets, host offsets and table indexes that follows from them.
/// </summary>
internal sealed class Qcow2Geometry
{
    public Qcow2Geometry(Qcow2Header header)
    {
        ClusterBits = header.ClusterBits;
        ClusterSize = 1 << ClusterBits;
        ExtendedL2 = header.HasExtendedL2;
        L2EntrySize = ExtendedL2 ? 16 : 8;
        L2Bits = ClusterBits - (ExtendedL2 ? 4 : 3);
        SubclusterBits = ExtendedL2 ? ClusterBits - 5 : ClusterBits;
        RefcountOrder = header.RefcountOrder;
        RefblockBits = ClusterBits + 3 - RefcountOrder;
        CompressedSizeShift = 62 - (ClusterBits - 8);
        Version = header.Version;
    }

    public int Version { get; }

    public int ClusterBits { get; }

    public int ClusterSize { get; }

    public long ClusterMask => ClusterSize - 1;

    /// <summary>16-byte L2 entries with a subcluster bitmap (incompatible feature bit 4).</summary>
    public bool ExtendedL2 { get; }

    public int L2EntrySize { get; }

    /// <summary>log2 of the entries in one L2 table.</summary>
    public int L2Bits { get; }

    public int L2Entries => 1 << L2Bits;

    /// <summary>Guest bytes one L2 table maps.</summary>
    public long L2Span => 1L << (ClusterBits + L2Bits);

    /// <summary>log2 of the allocation unit: the subcluster with extended L2 entries, else the cluster.</summary>
    public int SubclusterBits { get; }

    public int SubclusterSize => 1 << SubclusterBits;

    public int RefcountOrder { get; }

    public int RefcountBits => 1 << RefcountOrder;

    /// <summary>log2 of the refcounts in one refcount block.</summary>
    public int RefblockBits { get; }

    public long RefblockEntries => 1L << RefblockBits;

    /// <summary>The largest refcount an entry holds.</summary>
    public ulong MaxRefcount => RefcountBits == 64 ? ulong.MaxValue : (1UL << RefcountBits) - 1;

    /// <summary>Bit where a compressed descriptor's sector count starts (x in qcow2.txt).</summary>
    public int CompressedSizeShift { get; }

    public long ClusterIndex(long offset) => offset >> ClusterBits;

    public long ClusterStart(long offset) => offset & ~ClusterMask;

    public long ClusterEnd(long offset) => (offset + ClusterMask) & ~ClusterMask;

    public long L1Index(long guestOffset) => guestOffset >> (ClusterBits + L2Bits);

    public int L2Index(long guestOffset) => (int)((guestOffset >> ClusterBits) & (L2Entries - 1));

    /// <summary>Clusters needed to hold <paramref name="bytes"/>.</summary>
    public long ClustersFor(long bytes) => (bytes + ClusterMask) >> ClusterBits;

    /// <summary>
    /// Decodes a compressed cluster descriptor into the host byte offset of the compressed data and the
    /// span of 512-byte sectors it occupies (which may end in the next host cluster).
    /// </summary>
    public (long Offset, long SectorSpanStart, long SectorSpanLength) DecodeCompressed(ulong entry)
    {
        var offsetMask = (1UL << CompressedSizeShift) - 1;
        var sizeMask = (1UL << (ClusterBits - 8)) - 1;
        var offset = (long)(entry & offsetMask & Qcow2Entries.DescriptorMask);
        var sectors = (long)((entry >> CompressedSizeShift) & sizeMask) + 1;
        var spanStart = offset & ~511L;
        return (offset, spanStart, sectors * 512);
    }
}
