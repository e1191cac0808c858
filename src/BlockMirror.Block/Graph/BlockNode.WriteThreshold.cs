using System.Runtime.CompilerServices;

namespace BlockMirror.Block.Graph;

/// <summary>
/// The write threshold (QEMU's block/write-threshold.c, QMP's block-set-write-threshold): a byte offset on a
/// node, usually the protocol node under a format on thin-provisioned storage. The first write, write-zeroes
/// or discard that reaches beyond it raises <see cref="BlockGraph.WriteThresholdExceeded"/> once and turns
/// the threshold off, so a manager is told when to grow the volume without being flooded.
/// </summary>
/// <remarks>
/// The request path pays one volatile read per data-changing request while no threshold is set (the
/// usual case). The range checked is the one the node was asked for, before padding, as QEMU checks it
/// for every node whose request alignment is 1 (files without O_DIRECT, formats).
/// </remarks>
public sealed partial class BlockNode
{
    // 0 means off (QEMU's encoding). Read on every data-changing request, swapped out by the first request past it.
    ulong _writeThreshold;

    /// <summary>The write threshold in bytes; 0 when none is set (QMP's <c>write_threshold</c>).</summary>
    public ulong WriteThreshold
    {
        get => Volatile.Read(ref _writeThreshold);
        set => Volatile.Write(ref _writeThreshold, value);
    }

    /// <summary>
    /// The node was opened with <c>discard=unmap</c> (QEMU's BDRV_O_UNMAP). Otherwise QEMU drops a discard before
    /// it is tracked as a request, so only then does a discard reach the write threshold.
    /// </summary>
    public bool DiscardUnmaps { get; internal set; }

    /// <summary>
    /// The node was opened from options with <c>discard=ignore</c>: a discard sent to it ends here, successful and
    /// doing nothing. Nodes made by code (filters, tests) pass discards on.
    /// </summary>
    internal bool DropsDiscards { get; set; }

    /// <summary>Called before a data-changing request of [offset, offset+length) goes to the driver.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void CheckWriteThreshold(long offset, long length)
    {
        if (Volatile.Read(ref _writeThreshold) != 0)
        {
            CheckWriteThresholdSlow(offset, length);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    void CheckWriteThresholdSlow(long offset, long length)
    {
        var end = (ulong)(offset + length);
        while (true)
        {
            var threshold = Volatile.Read(ref _writeThreshold);
            if (threshold == 0 || threshold >= end)
            {
                return;
            }

            // Only the request that turns the threshold off reports it; a concurrent one, or a new threshold
            // set meanwhile, is looked at again.
            if (Interlocked.CompareExchange(ref _writeThreshold, 0, threshold) == threshold)
            {
                Graph.RaiseWriteThresholdExceeded(new WriteThresholdEvent(Name, end - threshold, threshold));
                return;
            }
        }
    }
}
