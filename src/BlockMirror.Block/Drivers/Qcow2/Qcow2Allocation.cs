namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// An allocating write between reserving its host clusters and setting their L2 entries: guest clusters
/// [Start, End). Other requests that change those clusters wait for <see cref="Done"/> (QEMU's cluster
/// allocation dependencies), so that two writes never both allocate one guest cluster.
/// </summary>
internal sealed class Qcow2Allocation(long start, long end)
{
    public long Start { get; } = start;

    public long End { get; } = end;

    public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}
