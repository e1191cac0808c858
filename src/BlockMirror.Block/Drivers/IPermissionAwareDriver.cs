using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// A driver that must know how its node is used, e.g. to hold image locks that other processes see.
/// The graph calls it, under its lock, whenever the node's cumulative use changes.
/// </summary>
public interface IPermissionAwareDriver
{
    /// <summary>
    /// The node's parents now take <paramref name="takes"/> and share <paramref name="shares"/>. Throws a
    /// <see cref="BlockGraphException"/> (and keeps what it had) when something outside forbids it.
    /// </summary>
    void SetPermissions(BlockPermissions takes, BlockPermissions shares);
}
