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

/// <summary>What an operation is, as far as the engine's bookkeeping goes.</summary>
enum MirrorOpKind
{
    /// <summary>A copy, zeroing or discard issued by the job's loop: takes an in-flight slot.</summary>
    Background,

    /// <summary>
    /// A claim the loop holds over a whole run while it issues the run's operations one by one (QEMU's
    /// pseudo op): requests that meet the run's chunks wait on it until every piece has been issued.
    /// </summary>
    Claim,

    /// <summary>A guest write that goes to source and target before it is acknowledged (write-blocking mode).</summary>
    ActiveWrite,
}

/// <summary>
/// One operation in flight: a range, its method, and for copies the buffer chunks it holds. Reused
/// from a small pool, so the copy loop does not allocate per operation. Every operation that holds
/// chunks of the in-flight map is listed by the engine, and requests that meet its range wait on it
/// alone (<see cref="Waiters"/>), not on whatever operation happens to end first.
/// </summary>
sealed class MirrorOp
{
    public long Offset { get; set; }

    public long Length { get; set; }

    public MirrorMethod Method { get; set; }

    public MirrorOpKind Kind { get; set; }

    /// <summary>True for the zeroing that precedes the copy; it does not count as progress and holds no chunks.</summary>
    public bool InitialZeroing { get; set; }

    /// <summary>A write-zeroes over chunks the target already reads as zeroes: done without a request.</summary>
    public bool SkipIo { get; set; }

    /// <summary>
    /// Active writes only: a guest write that did not go to the target overlapped this one in time, so the
    /// chunks this write covers may hold bytes the target lacks; they stay dirty at its end (see
    /// <see cref="MirrorEngine.KeepActiveWritesDirty"/>).
    /// </summary>
    public bool KeepDirty { get; set; }

    /// <summary>
    /// Requests waiting for this operation to end, created by the first of them (under the engine's lock)
    /// and completed when the operation leaves the list. Null while nobody waits, which is the usual case.
    /// </summary>
    public TaskCompletionSource? Waiters { get; set; }

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

    /// <summary>First chunk and chunk count of the op's range for <paramref name="granularity"/>-sized chunks.</summary>
    public (long First, long Count) Chunks(long granularity)
    {
        var first = Offset / granularity;
        return (first, (Offset + Length + granularity - 1) / granularity - first);
    }
}
