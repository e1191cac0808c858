namespace BlockMirror.Block.Io;

/// <summary>
/// Request geometry a driver imposes (QEMU's BlockLimits). The node rejects requests that break
/// <see cref="RequestAlignment"/>, so drivers may assume aligned input.
/// </summary>
/// <param name="RequestAlignment">Offsets and lengths must be multiples of this (1 = byte granular).</param>
/// <param name="ClusterSize">Allocation unit of the format or file system, 0 when the notion does not apply.</param>
/// <param name="MaxTransfer">Largest single read or write the driver accepts, in bytes.</param>
public sealed record BlockLimits(int RequestAlignment = 1, int ClusterSize = 0, int MaxTransfer = BlockLimits.DefaultMaxTransfer)
{
    /// <summary>Largest request we ever hand a driver in one piece (a Memory&lt;byte&gt; is int-sized).</summary>
    public const int DefaultMaxTransfer = 1 << 30;

    public static BlockLimits ByteGranular { get; } = new();
}
