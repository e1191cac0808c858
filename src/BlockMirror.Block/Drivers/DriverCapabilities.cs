namespace BlockMirror.Block.Drivers;

/// <summary>
/// What a driver can do, as data (nbdkit's <c>can_*</c>, QEMU's driver flags). Callers choose a
/// strategy from these instead of trying an operation and catching "not supported".
/// </summary>
public sealed record DriverCapabilities
{
    /// <summary>Write-zeroes costs about as little as a metadata update (no zero buffers written).</summary>
    public bool CanZeroEfficiently { get; init; }

    /// <summary>Write-zeroes with <c>MayUnmap</c> deallocates the range and it reads back as zeroes.</summary>
    public bool CanUnmapOnZero { get; init; }

    /// <summary>Discard actually releases space (otherwise it is accepted and ignored).</summary>
    public bool CanDiscard { get; init; }

    /// <summary>A discarded range reads back as zeroes.</summary>
    public bool DiscardZeroes { get; init; }

    /// <summary>The FUA flag is honoured natively (otherwise the node follows the write with a flush).</summary>
    public bool CanFua { get; init; }

    /// <summary>A freshly created image of this driver reads as zeroes everywhere.</summary>
    public bool ZeroInit { get; init; }

    /// <summary>The format can have a <c>backing</c> child that unallocated ranges fall through to.</summary>
    public bool SupportsBacking { get; init; }

    /// <summary>Truncate (grow or shrink) is supported.</summary>
    public bool CanTruncate { get; init; }

    /// <summary>Nothing: the conservative default for a driver that states nothing.</summary>
    public static DriverCapabilities None { get; } = new();
}
