using BlockMirror.Block.Bitmaps;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// A format that stores dirty bitmaps in the image (qcow2's bitmaps extension), as QEMU's persistent bitmaps.
/// The bitmaps are loaded at open as dirty bitmaps of the node, so every write through the node marks the
/// enabled ones; while the image is open for writing they are marked in use on disk, and they are stored back
/// (and the mark removed) when it is closed or reopened read-only. The node bitmaps it makes are marked
/// <see cref="DirtyBitmap.Persistent"/>, and <see cref="DirtyBitmap.Inconsistent"/> when found in use.
/// </summary>
public interface IPersistentBitmaps
{
    /// <summary>The bitmaps as the image stores them now, in directory order (what <c>qemu-img info</c> lists).</summary>
    IReadOnlyList<PersistentBitmapInfo> StoredBitmaps { get; }

    /// <summary>
    /// The node bitmap a persistent bitmap was loaded into, or null when there is none by that name, or when it
    /// cannot be used: found in use at open (its data is stale), or of a granularity a node bitmap cannot have.
    /// </summary>
    DirtyBitmap? FindPersistentBitmap(string name);

    /// <summary>
    /// Adds a persistent bitmap (QEMU's block-dirty-bitmap-add with persistent=true): a node bitmap, clean, enabled
    /// unless <paramref name="disabled"/>, stored in the image when it is closed. Refused, with QEMU's words, when
    /// the image is read-only, the name is taken, or the bitmap would break the format's limits.
    /// </summary>
    DirtyBitmap AddPersistentBitmap(string name, long granularity, bool disabled);

    /// <summary>Removes a persistent bitmap from the node and from the image now (QEMU's block-dirty-bitmap-remove); false when there is none by that name.</summary>
    ValueTask<bool> RemovePersistentBitmapAsync(string name, CancellationToken cancellationToken = default);
}
