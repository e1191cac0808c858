namespace BlockMirror.Block.Graph;

/// <summary>
/// What a node does with a write whose data is all zeroes (QEMU's BlockdevDetectZeroesOptions, the node option
/// <c>detect-zeroes</c>).
/// </summary>
public enum DetectZeroesMode
{
    /// <summary>The write is written as it is.</summary>
    Off,

    /// <summary>The write becomes a write-zeroes, which the driver may do without writing data.</summary>
    On,

    /// <summary>
    /// The write becomes a write-zeroes that may deallocate (<see cref="Io.RequestFlags.MayUnmap"/>); only for a
    /// node opened with <c>discard=unmap</c>.
    /// </summary>
    Unmap,
}
