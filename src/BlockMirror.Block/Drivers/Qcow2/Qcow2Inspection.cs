using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// What the image tools (<c>info</c>) read from an open qcow2 node's metadata, for qemu-img-compatible
/// reports, without the tools naming the driver type.
/// </summary>
public static class Qcow2Inspection
{
    /// <summary>The header of a qcow2 node; null for a node of any other driver.</summary>
    public static Qcow2Header? HeaderOf(BlockNode node) => (node.Driver as Qcow2Driver)?.Header;

    /// <summary>The internal snapshots of a qcow2 node (read at open); none for a node of any other driver.</summary>
    public static IReadOnlyList<SnapshotInfo> SnapshotsOf(BlockNode node) => (node.Driver as Qcow2Driver)?.Snapshots ?? [];

    /// <summary>The persistent bitmaps a node's image stores, as on disk; none for a driver that stores none.</summary>
    public static IReadOnlyList<PersistentBitmapInfo> BitmapsOf(BlockNode node) => (node.Driver as IPersistentBitmaps)?.StoredBitmaps ?? [];
}
