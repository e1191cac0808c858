namespace BlockMirror.Block.Drivers;

/// <summary>
/// A driver that can switch between read-only and read-write while open (QEMU's bdrv_reopen), which a
/// commit needs for its base. Called by <see cref="Graph.BlockGraph.ReopenAsync"/> inside a drained section:
/// going read-write, the node's file child is already read-write; going read-only, the driver makes its
/// cached metadata durable before its file child stops taking writes.
/// </summary>
public interface IReopenableDriver
{
    ValueTask ReopenAsync(bool readOnly, CancellationToken cancellationToken);
}
