namespace BlockMirror.Jobs.Mirror;

/// <summary>How one operation moves a range to the target.</summary>
enum MirrorMethod
{
    /// <summary>Read from the source, write to the target.</summary>
    Copy,

    /// <summary>The source reads zeroes: write-zeroes on the target (may unmap).</summary>
    Zero,

    /// <summary>Unallocated above the base the target shares: discard on the target.</summary>
    Discard,
}

/// <summary>
/// One operation in flight: a range, its method, and for copies the buffer chunks it holds. Reused
/// from a small pool (at most <see cref="MirrorJob.MaxInFlight"/> live at once), so the copy loop does
/// not allocate per operation.
/// </summary>
sealed class MirrorOp
{
    public long Offset { get; set; }

    public long Length { get; set; }

    public MirrorMethod Method { get; set; }

    /// <summary>True for the zeroing that precedes the copy; it does not count as progress.</summary>
    public bool InitialZeroing { get; set; }

    /// <summary>The chunks a copy reads into.</summary>
    public List<Memory<byte>> ReadSegments { get; } = [];

    /// <summary>The same chunks, as the write side takes them.</summary>
    public List<ReadOnlyMemory<byte>> WriteSegments { get; } = [];

    public void FillWriteSegments()
    {
        WriteSegments.Clear();
        foreach (var segment in ReadSegments)
        {
            WriteSegments.Add(segment);
        }
    }
}
