namespace BlockMirror.Block.Io;

/// <summary>What a layer knows about a byte range (QEMU's BDRV_BLOCK_* bits).</summary>
[Flags]
public enum BlockStatusFlags
{
    /// <summary>This layer has no data here and defers to its backing layer.</summary>
    None = 0,

    /// <summary>Reads return data stored in this layer (may still be zeroes).</summary>
    Data = 1 << 0,

    /// <summary>Reads return zeroes.</summary>
    Zero = 1 << 1,

    /// <summary>The content is decided by this layer rather than by a backing layer.</summary>
    Allocated = 1 << 2,

    /// <summary><see cref="BlockStatus.HostOffset"/> says where the data lives in the layer below.</summary>
    OffsetValid = 1 << 3,
}

/// <summary>
/// The answer to a block-status query: <see cref="Flags"/> hold for <see cref="Length"/> bytes from
/// the queried offset. The length is never zero for a non-empty query and never runs past what was asked.
/// </summary>
/// <param name="Flags">What holds for the whole run.</param>
/// <param name="Length">How many bytes the answer covers, from the queried offset.</param>
/// <param name="HostOffset">With <see cref="BlockStatusFlags.OffsetValid"/>: the byte offset in the layer below.</param>
public readonly record struct BlockStatus(BlockStatusFlags Flags, long Length, long HostOffset = -1)
{
    public bool IsData => (Flags & BlockStatusFlags.Data) != 0;

    public bool IsZero => (Flags & BlockStatusFlags.Zero) != 0;

    public bool IsAllocated => (Flags & BlockStatusFlags.Allocated) != 0;

    public bool HasHostOffset => (Flags & BlockStatusFlags.OffsetValid) != 0;

    public override string ToString() => $"{Flags} x {Length}" + (HasHostOffset ? $" @ {HostOffset}" : "");
}
