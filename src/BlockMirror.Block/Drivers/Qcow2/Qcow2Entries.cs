namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>Bits of L1, L2 and refcount table entries (qcow2.txt, "Cluster mapping" and "Host cluster management").</summary>
internal static class Qcow2Entries
{
    /// <summary>Bits 9-55: a cluster-aligned host offset (L1 entries, standard L2 descriptors, refcount table entries).</summary>
    public const ulong OffsetMask = 0x00ff_ffff_ffff_fe00UL;

    /// <summary>Bits 0-8 and 56-62 of an L1 entry: reserved, must be zero (QEMU's L1E_RESERVED_MASK; a check reports them).</summary>
    public const ulong L1ReservedMask = 0x7f00_0000_0000_01ffUL;

    /// <summary>Bits 1-8 and 56-61 of a standard L2 entry: reserved, must be zero (QEMU's L2E_STD_RESERVED_MASK; a check reports them).</summary>
    public const ulong L2ReservedMask = 0x3f00_0000_0000_01feUL;

    /// <summary>Bit 63 of L1 and L2 entries: the refcount is exactly one, so the cluster may be written in place.</summary>
    public const ulong Copied = 1UL << 63;

    /// <summary>Bit 62 of L2 entries: a compressed cluster descriptor.</summary>
    public const ulong Compressed = 1UL << 62;

    /// <summary>Bit 0 of a standard descriptor (version 3, no extended L2): the cluster reads as zeroes.</summary>
    public const ulong Zero = 1UL;

    /// <summary>Bits 0-61 of an L2 entry: the cluster descriptor.</summary>
    public const ulong DescriptorMask = (1UL << 62) - 1;

    /// <summary>The host offset of a standard descriptor or L1/refcount table entry.</summary>
    public static long HostOffset(ulong entry) => (long)(entry & OffsetMask);
}

/// <summary>What a guest cluster (or subcluster) is, as its L2 entry says.</summary>
internal enum Qcow2ClusterKind
{
    /// <summary>Not allocated in this image: reads fall through to the backing file, or zeroes without one.</summary>
    Unallocated,

    /// <summary>Reads as zeroes; may keep a preallocated host cluster (<see cref="Qcow2Mapping.HostOffset"/>).</summary>
    Zero,

    /// <summary>Data at a host offset.</summary>
    Normal,

    /// <summary>Deflate-compressed data; the descriptor is in <see cref="Qcow2Mapping.Entry"/>.</summary>
    Compressed,
}

/// <summary>
/// One run of guest bytes that all map the same way: <see cref="Length"/> bytes from the queried offset, of
/// one <see cref="Kind"/>, at consecutive host offsets where there is one, with one value of the copied flag.
/// A run never crosses an L2 table, and a compressed run never crosses a cluster.
/// </summary>
/// <param name="HostOffset">Host byte offset of the first queried byte, or -1 when there is no host cluster.</param>
/// <param name="Copied">Refcount one: written in place without copy-on-write.</param>
/// <param name="Entry">The raw L2 entry of the first cluster (compressed descriptors are decoded from it).</param>
internal readonly record struct Qcow2Mapping(Qcow2ClusterKind Kind, long Length, long HostOffset, bool Copied, ulong Entry)
{
    public bool HasHost => HostOffset >= 0;
}
