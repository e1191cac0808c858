namespace BlockMirror.Block.Graph;

/// <summary>
/// The arithmetic of padding a byte range to a node's request alignment, for a device whose length may
/// itself not be a multiple of the alignment (the last partial block is reached with an unaligned end,
/// which the driver handles, as it always did).
/// </summary>
readonly record struct RequestPadding(int Alignment, long DeviceLength)
{
    public long AlignDown(long value) => value / Alignment * Alignment;

    /// <summary>The padded end: the next aligned offset, or the device end when that comes first.</summary>
    public long PadEnd(long end) => Math.Min((end + Alignment - 1) / Alignment * Alignment, DeviceLength);

    /// <summary>An end the driver takes as it is: aligned, or the device end.</summary>
    public bool IsAlignedEnd(long end) => end % Alignment == 0 || end == DeviceLength;

    public bool IsAligned(long offset, long end) => offset % Alignment == 0 && IsAlignedEnd(end);

    /// <summary>
    /// The aligned middle of [offset, end): what a driver can zero or discard on its own. Empty (start ==
    /// end) when the range lies inside one or two partial blocks.
    /// </summary>
    public (long Start, long End) AlignedMiddle(long offset, long end)
    {
        var start = Math.Min(end, PadEnd(offset));
        var middleEnd = IsAlignedEnd(end) ? end : AlignDown(end);
        return (start, Math.Max(start, middleEnd));
    }

    /// <summary>
    /// The next piece of [position, end) that fits a driver limit: it ends at the next multiple of
    /// <paramref name="pieceSize"/> (a multiple of the alignment), so even padded it stays within the limit.
    /// </summary>
    public static long NextPieceEnd(long position, long end, long pieceSize) =>
        Math.Min(end, position / pieceSize * pieceSize + pieceSize);
}
