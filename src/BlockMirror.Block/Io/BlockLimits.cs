namespace BlockMirror.Block.Io;

/// <summary>
/// Request geometry a driver imposes (QEMU's BlockLimits). The node's request pipeline honours it: it pads
/// requests that break <see cref="RequestAlignment"/> (read-modify-write for writes) and splits those over
/// the maximums, so a driver only ever sees requests that fit, while every user may send any byte range.
/// </summary>
/// <param name="RequestAlignment">Offsets and lengths the driver takes are multiples of this (1 = byte granular).</param>
/// <param name="ClusterSize">Allocation unit of the format or file system, 0 when the notion does not apply.</param>
/// <param name="MaxTransfer">Largest single read or write the driver takes, in bytes.</param>
/// <param name="MaxWriteZeroes">Largest single write-zeroes the driver takes, in bytes.</param>
/// <param name="MaxDiscard">Largest single discard the driver takes, in bytes.</param>
public sealed record BlockLimits(
    int RequestAlignment = 1,
    int ClusterSize = 0,
    int MaxTransfer = BlockLimits.DefaultMaxTransfer,
    long MaxWriteZeroes = BlockLimits.Unlimited,
    long MaxDiscard = BlockLimits.Unlimited)
{
    /// <summary>Largest request we ever hand a driver in one piece (a Memory&lt;byte&gt; is int-sized).</summary>
    public const int DefaultMaxTransfer = 1 << 30;

    /// <summary>No limit of the driver's own on write-zeroes or discard.</summary>
    public const long Unlimited = long.MaxValue;

    public static BlockLimits ByteGranular { get; } = new();

    /// <summary>The largest piece the pipeline cuts: the limit rounded down to the alignment, never below one aligned block.</summary>
    public static long PieceSize(long limit, int alignment) => Math.Max(alignment, limit / alignment * alignment);
}
